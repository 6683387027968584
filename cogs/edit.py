"""✏️ Edit, submitted: the form's values become a new job (under a result) or the queued job's
new parameters, in place (on a queued message).

Forms are read here by their custom_id (`pony:edit:<job>`, `pony:edit-queued:<job>`, as
`ponybot_core.custom_ids` builds them), from every modal submit the gateway delivers, so a form
opened before a restart of the bot still works after it. Every refusal is private, and nothing
is queued or changed by a refused form.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot import guild_settings
from bot.answering import answer_errors
from bot.edit_form import (
    EditQueuedButton,
    already_started,
    queued_and_yours,
    read_form,
    submitted_values,
)
from bot.errors import UserFacingError
from bot.submit import check_against_config, job_channel, requester
from cogs import results
from ponybot_core.custom_ids import Action, template
from ponybot_core.logs import JobLog
from ponybot_core.messages import queued_text
from ponybot_core.poster import Poster
from ponybot_request.jobs import EditRequest, build_job
from ponybot_request.options import PonyOptions

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

Submitted = Callable[["PonyBot", discord.Interaction, str, PonyOptions], Awaitable[None]]


class EditCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        self.poster = Poster(bot)
        self.forms: dict[re.Pattern[str], Submitted] = {
            re.compile(template(Action.EDIT)): results.redraw_edited,
            re.compile(template(Action.EDIT_QUEUED)): self.edit_in_place,
        }

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data = interaction.data or {}
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
        position = (await bot.queue_view.positions()).get(job_id, 0)
        await interaction.response.send_message(
            f"✏️ Edited job `{job_id}`; it keeps its place in the queue.", ephemeral=True)
        if state.message_id is not None:
            text = queued_text(job, position=position, paused=position == 0,
                               model_name=model_name, notes=notes)
            if await self.poster.edit_queued(job, state.message_id, text) and position:
                await bot.queue.record_shown_position(job_id, position)


async def setup(bot: PonyBot) -> None:
    bot.add_dynamic_items(EditQueuedButton)
    await bot.add_cog(EditCog(bot))


async def teardown(bot: PonyBot) -> None:
    bot.remove_dynamic_items(EditQueuedButton)
