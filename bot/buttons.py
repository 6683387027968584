"""The persistent buttons the bot answers: one base that takes its custom_id template and its look
from the table (ponybot_core.custom_ids.BUTTONS), parses the job id (and an image index) from the
custom_id, so a click works after any restart, and answers every failure privately. Each cog
subclasses it for the buttons of its feature; this module also reads back the job a click
names, for the cogs that start from an earlier result (results, edit).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, cast

import discord

from bot.answering import answer_errors
from bot.errors import UserFacingError
from ponybot_core.config import Config
from ponybot_core.custom_ids import BUTTONS, Action
from ponybot_core.job import Job
from ponybot_core.messages import discord_button
from ponybot_core.queue import JobState

if TYPE_CHECKING:
    from bot.app import PonyBot

Button = discord.ui.Button[discord.ui.View]


class JobButton(discord.ui.DynamicItem[Button], template=r"(?!)"):
    """Subclass with `action=` and write `run`; the template and the look are the table's."""

    action: ClassVar[Action]

    def __init_subclass__(cls, *, action: Action, **kwargs: Any) -> None:
        super().__init_subclass__(template=BUTTONS[action].template, **kwargs)
        cls.action = action

    def __init__(self, job_id: str, index: int | None = None) -> None:
        super().__init__(discord_button(BUTTONS[self.action].button(job_id, index)))
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> JobButton:
        # The template admits only hex job ids and two-digit indexes: nothing here can fail.
        index = match.groupdict().get("index")
        return cls(match["job_id"], int(index) if index is not None else None)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        async with answer_errors(interaction):
            await self.run(cast("PonyBot", interaction.client), interaction)

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        raise NotImplementedError


def expired_text(config: Config) -> str:
    hours = config.queue.result_ttl_s / 3600
    kept = f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"
    return (
        f"⌛ This result has expired: its parameters are kept for {kept} after it is "
        "posted. Use /pony to draw it again."
    )


async def earlier_job(bot: PonyBot, job_id: str) -> tuple[Job, JobState]:
    """The job a result's button names and its state, or the "expired" answer."""
    state = await bot.queue_reads.state(job_id)
    if state is None:
        raise UserFacingError(expired_text(bot.config))
    return state.job(), state
