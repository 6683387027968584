"""Errors a user caused or can act on; the bot answers them with an ephemeral message."""

from __future__ import annotations


class UserFacingError(Exception):
    """`str(error)` is shown to the user as is: one clear sentence naming the problem."""


class QueueUnavailable(UserFacingError):
    def __init__(self) -> None:
        super().__init__(
            "The queue is unavailable right now (the bot cannot reach Redis). "
            "Nothing was queued; please try again in a minute."
        )
