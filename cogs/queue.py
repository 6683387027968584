"""`/queue`: see, pause, resume, clear and cancel jobs, cap users, list workers; and the ✖️ Cancel
button on every queued message (its look is ponybot_core.custom_ids.BUTTONS')."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import guild_settings
from bot.buttons import JobButton
from bot.permissions import is_owner, require_owner, require_server_admin
from ponybot_core.custom_ids import Action
from ponybot_core.heartbeat import read_heartbeats

if TYPE_CHECKING:
    from bot.app import PonyBot

Scope = Literal["server", "global"]


class QueueCog(commands.GroupCog, group_name="queue", group_description="The drawing queue"):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="show", description="Running and queued jobs, with ETAs")
    @app_commands.describe(everything="bot owners: every server's jobs")
    async def show(self, interaction: discord.Interaction, everything: bool = False) -> None:
        if everything:
            require_owner(self.bot.config, interaction)
            guild_id = None
        else:
            guild_id = require_server_admin(interaction)
        snap = await self.bot.queue_reads.snapshot(guild_id, all_guilds=everything)
        per_job = await self.bot.queue_reads.recent_job_seconds()
        workers = max(1, len(await read_heartbeats(self.bot.redis, self.bot.keys)))
        lines = []
        if snap.paused_globally:
            lines.append("⏸️ The whole queue is paused by the bot's owners.")
        if guild_id is not None and guild_id in snap.paused_guilds:
            lines.append("⏸️ This server's queue is paused.")
        for job, worker, started in snap.running:
            lines.append(f"▶️ `{job.id}` <@{job.user_id}> · {job.model_id} · on {worker} "
                         f"for {time.time() - started:.0f} s")
        for job, position in snap.queued[:20]:
            if position == 0:
                lines.append(f"⏸️ `{job.id}` <@{job.user_id}> · {job.model_id} · paused")
            else:
                hires = " · hires" if job.hires is not None else ""
                lines.append(f"#{position} `{job.id}` <@{job.user_id}> · {job.model_id}{hires} · "
                             f"{eta(snap.work_ahead.get(job.id, position), per_job, workers)}")
        if len(snap.queued) > 20:
            lines.append(f"… and {len(snap.queued) - 20} more")
        await reply(interaction, "\n".join(lines) or "The queue is empty.")

    @app_commands.command(name="pause", description="Hold queued jobs until resumed")
    async def pause(self, interaction: discord.Interaction, scope: Scope = "server") -> None:
        guild_id = self._scope_target(interaction, scope)
        await self.bot.queue.pause(guild_id)
        where = "everywhere" if guild_id is None else "in this server"
        await reply(interaction, f"⏸️ Paused {where}: queued jobs wait; running ones finish.")

    @app_commands.command(name="resume", description="Let queued jobs run again")
    async def resume(self, interaction: discord.Interaction, scope: Scope = "server") -> None:
        guild_id = self._scope_target(interaction, scope)
        await self.bot.queue.resume(guild_id)
        where = "everywhere" if guild_id is None else "in this server"
        await reply(interaction, f"▶️ Resumed {where}.")

    @app_commands.command(name="clear", description="Cancel queued jobs (all, or one user's)")
    async def clear(self, interaction: discord.Interaction,
                    user: discord.User | None = None) -> None:
        guild_id = require_server_admin(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        cancelled = await self.bot.queue.clear(guild_id, user.id if user else None)
        for result in cancelled:
            await self.bot.cancelling.tell(result, by_admin=True)
        whose = f"{user.mention}'s" if user else "all"
        await interaction.followup.send(f"Cancelled {len(cancelled)} of {whose} queued jobs.",
                                        ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel a queued or running job")
    @app_commands.describe(job="the job id (in the footer of its message)")
    async def cancel(self, interaction: discord.Interaction, job: str) -> None:
        await reply(interaction, await self.bot.cancelling.cancel(interaction, job.strip()))

    @app_commands.command(name="limit", description="Queued + running jobs one user may have")
    async def limit(self, interaction: discord.Interaction,
                    jobs: app_commands.Range[int, 1, 100]) -> None:
        guild_id = require_server_admin(interaction)
        await guild_settings.set_user_limit(self.bot.redis, self.bot.keys, guild_id, jobs)
        await reply(interaction, f"Each user may now have {jobs} job(s) queued or running here.")

    @app_commands.command(name="workers", description="Live workers and what they are doing")
    async def workers(self, interaction: discord.Interaction) -> None:
        if not is_owner(self.bot.config, interaction.user.id):
            require_server_admin(interaction)
        beats = await read_heartbeats(self.bot.redis, self.bot.keys)
        lines = [
            f"🖥️ **{b.name}** on {b.host} · {b.device} · loaded: {', '.join(b.loaded) or '—'} · "
            f"job: {('`' + b.current_job + '`') if b.current_job else 'idle'} · "
            f"{b.jobs_done} jobs, {b.images_per_s:.2f} img/s, busy {b.busy_fraction:.0%} · "
            f"beat {time.time() - b.at:.0f} s ago"
            for b in beats
        ]
        await reply(interaction, "\n".join(lines) or "No worker is running.")

    def _scope_target(self, interaction: discord.Interaction, scope: Scope) -> int | None:
        if scope == "global":
            require_owner(self.bot.config, interaction)
            return None
        return require_server_admin(interaction)


def eta(work: float, per_job_s: float | None, workers: int) -> str:
    """When the job is done: `work` is what is queued up to and including it, in plain jobs
    (its position, but a hires job weighs its extra pixels × steps: `Job.work_units`)."""
    if per_job_s is None:
        return "ETA unknown"
    seconds = work * per_job_s / workers
    return f"ETA ~{seconds:.0f} s" if seconds < 120 else f"ETA ~{seconds / 60:.0f} min"


async def reply(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(text[:2000], ephemeral=True,
                                            allowed_mentions=discord.AllowedMentions.none())


class CancelButton(JobButton, action=Action.CANCEL):
    """✖️ on a queued message: `/queue cancel` for the job, by a click."""

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        text = await bot.cancelling.cancel(interaction, self.job_id)
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: PonyBot) -> None:
    bot.add_dynamic_items(CancelButton)
    await bot.add_cog(QueueCog(bot))


async def teardown(bot: PonyBot) -> None:
    bot.remove_dynamic_items(CancelButton)
