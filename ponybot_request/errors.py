"""The one refusal every request can meet: a sentence the user reads as is (the bot answers it
privately, `ponybot draw` prints it). Defined here, with the requests, so that building a job
needs nothing of the bot; `bot.errors` adds the bot's own (the queue unreachable)."""

from __future__ import annotations


class UserFacingError(Exception):
    """`str(error)` is shown to the user as is: one clear sentence naming the problem."""
