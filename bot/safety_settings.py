"""A server's picture-check choice (`/safety`): what a flagged picture becomes, and whether
age-restricted channels are checked too. One JSON field of the server's settings hash
(`bot.guild_settings`, field `safety`), read with the rest in the same HGETALL.

The bot turns it, with the channel's age restriction, into each job's `PictureCheck` (what
the worker obeys) when the job is queued (`bot.submit`)."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from ponybot_core.job import Flagged, PictureCheck
from ponybot_core.keys import Keys

log = logging.getLogger(__name__)

SAFETY_FIELD = "safety"


class SafetyChoice(BaseModel):
    """What one server chose; the defaults are what a server that chose nothing gets."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    flagged: Flagged = Flagged.WITHHOLD
    # REDIRECT: the age-restricted channel flagged pictures go to.
    redirect_channel_id: int | None = None
    # Check pictures in age-restricted channels too.
    check_age_restricted: bool = False

    def picture_check(self, *, age_restricted: bool) -> PictureCheck:
        """The job's `PictureCheck` in a channel that is (or is not) age-restricted."""
        flagged = self.flagged
        if flagged is Flagged.REDIRECT and self.redirect_channel_id is None:
            flagged = Flagged.WITHHOLD
        return PictureCheck(check=not age_restricted or self.check_age_restricted,
                            flagged=flagged, redirect_channel_id=self.redirect_channel_id
                            if flagged is Flagged.REDIRECT else None)

    def describe(self) -> str:
        what = {Flagged.WITHHOLD: "withheld (a placeholder in their place)",
                Flagged.SPOILER: "posted behind a spoiler",
                Flagged.REDIRECT: f"posted in <#{self.redirect_channel_id}> instead"}
        where = ("every channel, age-restricted ones too" if self.check_age_restricted
                 else "channels that are not age-restricted")
        return f"Pictures are checked in {where}; flagged pictures are {what[self.flagged]}."


def from_value(value: str | None, guild_id: int) -> SafetyChoice:
    """The field read back; unreadable (hand-edited) counts as unset: the default withholds."""
    if not value:
        return SafetyChoice()
    try:
        return SafetyChoice.model_validate_json(value)
    except ValidationError:
        log.warning("guild %s: ignoring unreadable safety choice %r", guild_id, value)
        return SafetyChoice()


async def save(redis: Redis, keys: Keys, guild_id: int, choice: SafetyChoice) -> None:
    await redis.hset(keys.guild(guild_id), SAFETY_FIELD, choice.model_dump_json())
