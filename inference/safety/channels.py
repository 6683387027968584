"""Whether a job's pictures need the check, asked of Discord when the worker is about to draw and
post them rather than trusted from when the bot queued the job.

The bot decides `PictureCheck.check` from the channel as it was at queue time; an admin may lift
a channel's age restriction while the job waits (or while it is edited in place, which keeps the
decision). A job queued as needing no check is therefore checked unless Discord says, now, that
its channel is still age-restricted; when Discord cannot be asked, it is checked (never fail
open). A job already checked is never asked about: asking can only add a check.
"""

from __future__ import annotations

import logging

import discord

from ponybot_core.job import Job
from ponybot_core.logs import JobLog

log = logging.getLogger(__name__)


async def is_age_restricted_now(client: discord.Client, channel_id: int) -> bool:
    """Whether Discord says the channel is age-restricted now; False when it cannot say (the
    channel is gone or hidden, Discord is down) or it is a kind that cannot be. A thread's
    restriction is its parent's, which a REST-only client does not have: False."""
    try:
        channel = await client.fetch_channel(channel_id)
    except Exception as exc:  # no answer (HTTP, network, a shape discord.py cannot read)
        log.warning("channel %s: cannot tell whether it is age-restricted (%s): checking",
                    channel_id, exc)
        return False
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


async def as_checked_now(client: discord.Client, job: Job) -> Job:
    """`job`, with its pictures checked unless its channel is still age-restricted."""
    if job.picture_check.check or await is_age_restricted_now(client, job.channel_id):
        return job
    JobLog(log, job.id).info("channel %s is no longer age-restricted: pictures checked",
                             job.channel_id)
    return job.model_copy(update={"picture_check": job.picture_check.model_copy(
        update={"check": True})})
