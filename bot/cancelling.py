"""Cancelling jobs from the bot: `/queue cancel`, `/queue clear` and the Cancel button."""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.errors import UserFacingError
from bot.permissions import is_owner, is_server_admin
from ponybot_core.config import Config
from ponybot_core.messages import cancelled_text
from ponybot_core.poster import Poster
from ponybot_core.queue import Cancelled, JobStatus, Producer, QueueReads


@dataclass(frozen=True)
class Cancelling:
    """What cancelling needs, and nothing else of the bot."""

    queue: Producer
    reads: QueueReads
    config: Config
    poster: Poster

    async def cancel(self, interaction: discord.Interaction, job_id: str) -> str:
        """Cancel one job if the user may; returns what to tell them."""
        return await cancel_job(self, interaction, job_id)

    async def tell(self, cancelled: Cancelled, *, by_admin: bool) -> None:
        """Edit the job's queued message to say so (best effort)."""
        if cancelled.job is not None:
            await self.poster.tell(cancelled.job, cancelled.message_id,
                                   cancelled_text(cancelled.job, by_admin=by_admin))


async def cancel_job(bot: Cancelling, interaction: discord.Interaction, job_id: str) -> str:
    job = await bot.reads.job(job_id)
    if job is None:
        raise UserFacingError(f"There is no job `{job_id}` (finished jobs are kept a while, "
                              "then forgotten).")
    own = job.user_id == interaction.user.id
    admin = is_server_admin(interaction) and job.guild_id == interaction.guild_id
    if not (own or admin or is_owner(bot.config, interaction.user.id)):
        raise UserFacingError("Only the person who asked for this job or a server admin can "
                              "cancel it.")
    result = await bot.queue.cancel(job_id)
    if result.was == JobStatus.QUEUED:
        await bot.tell(result, by_admin=not own)
        return f"Cancelled job `{job_id}`."
    if result.was == JobStatus.RUNNING:
        return f"Job `{job_id}` is running; it stops at the next sampling step."
    return f"Job `{job_id}` is already {result.was}."

