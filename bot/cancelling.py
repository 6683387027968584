"""Cancelling jobs from the bot: `/queue cancel`, `/queue clear` and the Cancel button."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.errors import UserFacingError
from bot.permissions import is_owner, is_server_admin
from ponybot_core.messages import cancelled_text
from ponybot_core.poster import Poster
from ponybot_core.queue import Cancelled, JobStatus

if TYPE_CHECKING:
    from bot.app import PonyBot


async def cancel_job(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> str:
    """Cancel one job if the user may; returns what to tell them."""
    job = await bot.queue_view.job(job_id)
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
        await tell_cancelled(bot, result, by_admin=not own)
        return f"Cancelled job `{job_id}`."
    if result.was == JobStatus.RUNNING:
        return f"Job `{job_id}` is running; it stops at the next sampling step."
    return f"Job `{job_id}` is already {result.was}."


async def tell_cancelled(bot: PonyBot, cancelled: Cancelled, *, by_admin: bool) -> None:
    """Edit the job's queued message to say so (best effort)."""
    if cancelled.job is not None:
        await Poster(bot).tell(cancelled.job, cancelled.message_id,
                               cancelled_text(cancelled.job, by_admin=by_admin))
