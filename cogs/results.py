"""The buttons under every result: 🔁 Re-roll, U1–Un (upscale), V1–Vn (variation), ✏️ Edit
(a form, bot/edit_form.py), ⬆️ Hires (ponybot_core/hires.py), 🗑 Delete.

Workers post the buttons (`ponybot_core.messages.result_view`); the bot answers them here. Each is a
`discord.ui.DynamicItem` whose template comes from `ponybot_core.custom_ids`, so a click on a result
posted days ago, across any number of restarts, still finds its job: the parameters are read
back from the job's state hash, which is kept `queue.result_ttl_s` after the job finished.

A click becomes a request for ponybot_request.jobs.build_job (which checks the earlier caption
against this channel again) and an ordinary queued job through `bot.submit`, exactly like
`/pony` (position, per-user cap, fairness, pause): the click's interaction is answered with a
new queued message, and the worker edits that message into the new result with the click's
token.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import discord

from bot import guild_settings
from bot.buttons import JobButton
from bot.edit_form import open_form
from bot.errors import UserFacingError
from bot.permissions import is_owner, is_server_admin
from bot.submit import channel_of, requester
from ponybot_core.custom_ids import Action
from ponybot_core.job import Job
from ponybot_core.logs import JobLog
from ponybot_core.queue import JobState, JobStatus
from ponybot_request.jobs import EditRequest, FromResult, build_job, check_editable
from ponybot_request.options import PonyOptions

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)


# --- what each button does -------------------------------------------------------------------


async def reroll(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """🔁: the same parameters (and, for a variation, the same source image), a new seed."""
    source, _ = await _source(bot, job_id)
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


async def edit(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """✏️: the form, prefilled with the job's tags, negative tags, seed and steps; submitted, it
    becomes `redraw_edited` (cogs/edit.py reads the submit)."""
    source, _ = await _source(bot, job_id)
    check_editable(source)
    await open_form(interaction, source, bot.config, action=Action.EDIT, title="Edit and redraw")


async def redraw_edited(bot: PonyBot, interaction: discord.Interaction, job_id: str,
                        options: PonyOptions) -> None:
    """The submitted ✏️ form: the job again (same model, size, count; a variation from the
    same picture) with the form's tags, negative tags, seed and steps, as a new queued job in
    the channel the form was sent from. The new caption is checked here and now, as /pony
    checks it."""
    source, _ = await _source(bot, job_id)
    await _queue_from(bot, interaction, EditRequest(by=requester(interaction), source=source,
                                                    form=options))


async def hires(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """⬆️: the same pictures drawn again in two passes: the same seeds at the same size (run on
    their own, so the first pass is exactly the picture shown), then enlarged and refined."""
    source, _ = await _source(bot, job_id)
    await _queue_from(bot, interaction, FromResult(kind="hires", by=requester(interaction),
                                                   source=source))


async def delete(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """🗑: the result's requester, the server's admins and the bot's owners may delete it."""
    job = await bot.queue_view.job(job_id)
    own = job is not None and job.user_id == interaction.user.id
    admin = is_server_admin(interaction) and (job is None or job.guild_id == interaction.guild_id)
    if not (own or admin or is_owner(bot.config, interaction.user.id)):
        if job is None:
            raise UserFacingError(_expired(bot))
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


def _expired(bot: PonyBot) -> str:
    hours = bot.config.queue.result_ttl_s / 3600
    kept = f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"
    return (
        f"⌛ This result has expired: its parameters are kept for {kept} after it is "
        "posted. Use /pony to draw it again."
    )


async def _source(bot: PonyBot, job_id: str) -> tuple[Job, JobState]:
    """The earlier job and its state, or the "expired" answer."""
    state = await bot.queue_view.state(job_id)
    if state is None:
        raise UserFacingError(_expired(bot))
    return state.job(), state


async def _posted_image(bot: PonyBot, job_id: str, index: int) -> Job:
    """The earlier job, checked to have posted its images for the worker to fetch (which of
    them exist is build_job's to check)."""
    source, state = await _source(bot, job_id)
    if state.status is not JobStatus.POSTED or state.result_message_id is None:
        raise UserFacingError(f"Job `{job_id}` has no posted picture to start from.")
    return source


async def _queue_from(bot: PonyBot, interaction: discord.Interaction,
                      request: FromResult | EditRequest) -> None:
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
    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": "Re-roll", "emoji": "🔁"}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await reroll(bot, interaction, self.job_id)


class UpscaleButton(JobButton, action=Action.UPSCALE):
    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": f"U{(index or 0) + 1}"}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await upscale(bot, interaction, self.job_id, self.index or 0)


class VaryButton(JobButton, action=Action.VARY):
    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": f"V{(index or 0) + 1}"}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await vary(bot, interaction, self.job_id, self.index or 0)


class EditButton(JobButton, action=Action.EDIT):
    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": "Edit", "emoji": "✏️"}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await edit(bot, interaction, self.job_id)


class HiresButton(JobButton, action=Action.HIRES):
    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": "Hires", "emoji": "⬆️"}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await hires(bot, interaction, self.job_id)


class DeleteButton(JobButton, action=Action.DELETE):
    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": "Delete", "emoji": "🗑️", "style": discord.ButtonStyle.danger}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await delete(bot, interaction, self.job_id)


RESULT_BUTTONS = (RerollButton, UpscaleButton, VaryButton, EditButton, HiresButton,
                  DeleteButton)


async def setup(bot: PonyBot) -> None:
    bot.add_dynamic_items(*RESULT_BUTTONS)


async def teardown(bot: PonyBot) -> None:
    bot.remove_dynamic_items(*RESULT_BUTTONS)
