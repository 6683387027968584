"""The buttons under every result: 🔁 Re-roll, U1–Un (upscale), V1–Vn (variation), ⬆️ Hires
(ponybot_core/hires_plan.py), 🗑 Delete; its ✏️ Edit is the edit cog's (cogs/edit.py).

Workers post the buttons (`ponybot_core.messages.result_view`); the bot answers them here. Each is a
`discord.ui.DynamicItem` (bot/buttons.py) whose template and look are its entry in
`ponybot_core.custom_ids.BUTTONS`, so a click on a result posted days ago, across any number of
restarts, still finds its job: the parameters are read back from the job's state hash, which is
kept `queue.result_ttl_s` after the job finished.

A click becomes a request for ponybot_request.jobs.build_job (which checks the earlier caption
against this channel again) and an ordinary queued job through `bot.submit`, exactly like
`/pony` (position, per-user cap, fairness, pause): the click's interaction is answered with a
new queued message, and the worker edits that message into the new result with the click's
token.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import discord

from bot import guild_settings
from bot.buttons import JobButton, earlier_job, expired_text
from bot.errors import UserFacingError
from bot.permissions import is_owner, is_server_admin
from bot.submit import channel_of, requester
from ponybot_core.custom_ids import Action
from ponybot_core.job import Job
from ponybot_core.logs import JobLog
from ponybot_core.queue import JobStatus
from ponybot_request.jobs import FromResult, build_job

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)


# --- what each button does -------------------------------------------------------------------


async def reroll(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """🔁: the same parameters (and, for a variation, the same source image), a new seed."""
    source, _ = await earlier_job(bot, job_id)
    await _queue_from(bot, interaction, FromResult(kind="reroll", by=requester(interaction),
                                                   source=source))


async def upscale(bot: PonyBot, interaction: discord.Interaction, job_id: str, index: int) -> None:
    """U<i>: image i of the job through the configured upscaler, as its own job."""
    source = await _posted_image(bot, job_id, index)
    await _queue_from(bot, interaction, FromResult(kind="upscale", by=requester(interaction),
                                                   source=source, index=index))


async def vary(bot: PonyBot, interaction: discord.Interaction, job_id: str, index: int) -> None:
    """V<i>: img2img from image i with the same prompt, a new seed and the configured strength;
    upscaled like its source was (`/pony upscale:true`)."""
    source = await _posted_image(bot, job_id, index)
    await _queue_from(bot, interaction, FromResult(kind="vary", by=requester(interaction),
                                                   source=source, index=index))


async def hires(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """⬆️: the same pictures drawn again in two passes: the same seeds at the same size (run on
    their own, so the first pass is exactly the picture shown), then enlarged and refined."""
    source, _ = await earlier_job(bot, job_id)
    await _queue_from(bot, interaction, FromResult(kind="hires", by=requester(interaction),
                                                   source=source))


async def delete(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """🗑: the result's requester, the server's admins and the bot's owners may delete it."""
    job = await bot.queue_reads.job(job_id)
    own = job is not None and job.user_id == interaction.user.id
    admin = is_server_admin(interaction) and (job is None or job.guild_id == interaction.guild_id)
    if not (own or admin or is_owner(bot.config, interaction.user.id)):
        if job is None:
            raise UserFacingError(expired_text(bot.config))
        raise UserFacingError(
            "Only the person who asked for this picture or a server admin can delete it."
        )
    message = interaction.message
    if message is None:  # Discord always sends the clicked message; be safe anyway
        raise UserFacingError("Discord did not say which message to delete.")
    # Deleting is one REST call but may wait out a rate limit: answer first ("thinking…").
    await interaction.response.defer(ephemeral=True, thinking=True)
    await _delete_message(bot, message, job)
    log.info("job=%s result message %s deleted by user=%s", job_id, message.id, interaction.user.id)
    await interaction.followup.send("🗑️ Deleted.", ephemeral=True)


# --- helpers ---------------------------------------------------------------------------------


async def _posted_image(bot: PonyBot, job_id: str, index: int) -> Job:
    """The earlier job, checked to have posted its images for the worker to fetch (which of
    them exist is build_job's to check)."""
    source, state = await earlier_job(bot, job_id)
    if state.status is not JobStatus.POSTED or state.result_message_id is None:
        raise UserFacingError(f"Job `{job_id}` has no posted picture to start from.")
    return source


async def _queue_from(bot: PonyBot, interaction: discord.Interaction,
                      request: FromResult) -> None:
    """Build the job the click asks for in this channel (ponybot_request.jobs.build_job: the
    earlier caption checked again, as /pony would) and queue it."""
    guild = await guild_settings.load(bot.redis, bot.keys, interaction.guild_id)
    built = build_job(request, channel_of(interaction, guild), None, config=bot.config)
    JobLog(log, built.job.id).info("%s of %s by user=%s", request.kind, request.source.id,
                                   built.job.user_id)
    await bot.submitter.submit(interaction, built.job, notes=built.notes, guild=guild)


async def _delete_message(bot: PonyBot, message: discord.Message, job: Job | None) -> None:
    """With the bot token; where that is refused, with the job's interaction token (it can
    delete the interaction's own message for 15 minutes)."""
    try:
        await message.delete()
        return
    except discord.NotFound:
        return  # gone already: what was asked
    except discord.HTTPException as exc:
        if job is None or not job.token_usable(time.time()):
            raise UserFacingError(
                "Discord did not let me delete that message (the bot may "
                "lack access to this channel)."
            ) from exc
    webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=bot)
    try:
        await webhook.delete_message(message.id)
    except discord.NotFound:
        return
    except discord.HTTPException as exc:
        raise UserFacingError("Discord did not let me delete that message.") from exc


# --- the persistent buttons ------------------------------------------------------------------


class RerollButton(JobButton, action=Action.REROLL):
    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await reroll(bot, interaction, self.job_id)


class UpscaleButton(JobButton, action=Action.UPSCALE):
    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await upscale(bot, interaction, self.job_id, self.index or 0)


class VaryButton(JobButton, action=Action.VARY):
    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await vary(bot, interaction, self.job_id, self.index or 0)


class HiresButton(JobButton, action=Action.HIRES):
    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await hires(bot, interaction, self.job_id)


class DeleteButton(JobButton, action=Action.DELETE):
    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await delete(bot, interaction, self.job_id)


RESULT_BUTTONS = (RerollButton, UpscaleButton, VaryButton, HiresButton, DeleteButton)


async def setup(bot: PonyBot) -> None:
    bot.add_dynamic_items(*RESULT_BUTTONS)


async def teardown(bot: PonyBot) -> None:
    bot.remove_dynamic_items(*RESULT_BUTTONS)
