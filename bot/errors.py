"""Errors a user caused or can act on; the bot answers them with an ephemeral message.
`UserFacingError` is the requests' own (ponybot_request.errors): building a job refuses with it."""

from __future__ import annotations

from ponybot_request.errors import UserFacingError

__all__ = ["QueueUnavailable", "UserFacingError"]


class QueueUnavailable(UserFacingError):
    def __init__(self) -> None:
        super().__init__(
            "The queue is unavailable right now (the bot cannot reach Redis). "
            "Nothing was queued; please try again in a minute."
        )
