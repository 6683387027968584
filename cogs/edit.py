"""✏️ Edit, both buttons and the form they open: under a result (`pony:edit:<job>`) the form's
values become a new job; on a queued message (`pony:edit-queued:<job>`) they become the queued
job's new parameters, in place, while it has not started.

The form is bot/edit_form.py's. Forms are read here by their custom_id (as
`ponybot_core.custom_ids` builds them), from every modal submit the gateway delivers, so a form
opened before a restart of the bot still works after it. Every refusal is private, and nothing
is queued or changed by a refused form.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import discord
from discord.ext import commands

from bot import guild_settings
from bot.answering import answer_errors
from bot.buttons import JobButton, earlier_job
from bot.edit_form import open_form, read_form, submitted_values
from bot.errors import UserFacingError
from bot.submit import channel_of, check_against_config, job_channel, requester
from ponybot_core.custom_ids import Action, template
from ponybot_core.logs import JobLog
from ponybot_core.messages import queued_text
from ponybot_core.poster import Poster
from ponybot_core.queue import JobState, JobStatus
from ponybot_request.jobs import EditRequest, build_job, check_editable, check_in_its_channel
from ponybot_request.options import PonyOptions

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

Submitted = Callable[["PonyBot", discord.Interaction, str, PonyOptions], Awaitable[None]]


# --- under a result: a new job ----------------------------------------------------------------


async def edit(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """✏️ under a result: the form, prefilled with the job's tags, negative tags, seed and steps;
    submitted, it becomes `redraw_edited`."""
    source, _ = await earlier_job(bot, job_id)
    check_editable(source)
    check_in_its_channel(source, interaction.guild_id, interaction.channel_id or 0)
    await open_form(interaction, source, bot.config, action=Action.EDIT, title="Edit and redraw")


async def redraw_edited(bot: PonyBot, interaction: discord.Interaction, job_id: str,
                        options: PonyOptions) -> None:
    """The submitted ✏️ form: the job again (same model, size, count; a variation from the
    same picture) with the form's tags, negative tags, seed and steps, as a new queued job in
    the channel the form was sent from. The new caption is checked here and now, as /pony
    checks it."""
    source, _ = await earlier_job(bot, job_id)
    guild = await guild_settings.load(bot.redis, bot.keys, interaction.guild_id)
    built = build_job(EditRequest(by=requester(interaction), source=source, form=options),
                      channel_of(interaction, guild), None, config=bot.config)
    JobLog(log, built.job.id).info("edit of %s by user=%s", job_id, built.job.user_id)
    await bot.submitter.submit(interaction, built.job, notes=built.notes, guild=guild)


# --- on a queued message: the job where it waits -----------------------------------------------


async def queued_and_yours(bot: PonyBot, job_id: str, user_id: int) -> JobState:
    """The queued job's state, if it is `user_id`'s and still waits; else the refusal to show
    (the queue checks "still waits" again as it edits)."""
    state = await bot.queue_reads.state(job_id)
    if state is None:
        raise UserFacingError(already_started(job_id, ""))
    if state.job().user_id != user_id:
        raise UserFacingError("Only the person who asked for this job can edit it.")
    if state.status is not JobStatus.QUEUED:
        raise UserFacingError(already_started(job_id, state.status))
    return state


def already_started(job_id: str, status: str) -> str:
    if status in (JobStatus.RUNNING, JobStatus.POSTING):
        return (f"Job `{job_id}` has already started, so it can no longer be edited; use ✏️ Edit "
                "on its result to draw it again with changes.")
    return f"Job `{job_id}` is {status or 'gone'}: there is nothing left to edit."


async def edit_queued(bot: PonyBot, interaction: discord.Interaction, job_id: str) -> None:
    """✏️ on a queued message: the same form, for the requester, before the job starts."""
    state = await queued_and_yours(bot, job_id, interaction.user.id)
    await open_form(interaction, state.job(), bot.config, action=Action.EDIT_QUEUED,
                    title="Edit your queued picture")


class EditCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        self.poster = Poster(bot)
        self.forms: dict[re.Pattern[str], Submitted] = {
            re.compile(template(Action.EDIT)): redraw_edited,
            re.compile(template(Action.EDIT_QUEUED)): self.edit_in_place,
        }

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data = cast("dict[str, Any]", interaction.data or {})
        form_id = str(data.get("custom_id", ""))
        for pattern, submitted in self.forms.items():
            if match := pattern.fullmatch(form_id):
                async with answer_errors(interaction):
                    options = read_form(self.bot.config,
                                        submitted_values(data.get("components", [])))
                    await submitted(self.bot, interaction, match["job_id"], options)
                return

    async def edit_in_place(self, bot: PonyBot, interaction: discord.Interaction, job_id: str,
                            options: PonyOptions) -> None:
        """The queued job gets the form's values where it waits, if it has not started: its
        place in the queue stays, and its queued message shows the new caption."""
        # 1. Still the requester's, still waiting (the queue checks again as it edits).
        state = await queued_and_yours(bot, job_id, interaction.user.id)
        source = state.job()
        # 2. The new caption, checked as /pony checks it against the job's own channel and
        #    server, where it stays: not wherever the form was sent from.
        guild = await guild_settings.load(bot.redis, bot.keys, source.guild_id)
        built = build_job(EditRequest(by=requester(interaction), source=source, form=options,
                                      in_place=True),
                          job_channel(bot, source, guild), None, config=bot.config)
        job, notes = built.job, built.notes
        model_name = check_against_config(bot.config, job)
        # 3. Swap it in, unless a worker took the job meanwhile.
        edited = await bot.queue.edit_queued(job)
        if not edited.done:
            raise UserFacingError(already_started(job_id, edited.was))
        JobLog(log, job_id).info("edited in place by user=%s", interaction.user.id)
        # 4. Say so, then show the new caption on the queued message (its buttons stay).
        position = (await bot.queue_reads.positions()).get(job_id, 0)
        await interaction.response.send_message(
            f"✏️ Edited job `{job_id}`; it keeps its place in the queue.", ephemeral=True)
        if state.message_id is not None:
            text = queued_text(job, position=position, paused=position == 0,
                               model_name=model_name, notes=notes)
            if await self.poster.edit_queued(job, state.message_id, text) and position:
                await bot.queue.record_shown_position(job_id, position)


# --- the persistent buttons ------------------------------------------------------------------


class EditButton(JobButton, action=Action.EDIT):
    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await edit(bot, interaction, self.job_id)


class EditQueuedButton(JobButton, action=Action.EDIT_QUEUED):
    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await edit_queued(bot, interaction, self.job_id)


EDIT_BUTTONS = (EditButton, EditQueuedButton)


async def setup(bot: PonyBot) -> None:
    bot.add_dynamic_items(*EDIT_BUTTONS)
    await bot.add_cog(EditCog(bot))


async def teardown(bot: PonyBot) -> None:
    bot.remove_dynamic_items(*EDIT_BUTTONS)
