"""The persistent buttons the bot answers: one base that parses the job id (and an image index)
from the custom_id, so a click works after any restart, and answers every failure privately.
A button is its action, its look and what a click does."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

import discord

from bot.answering import answer_errors
from ponybot_core.custom_ids import Action, custom_id, template

if TYPE_CHECKING:
    from bot.app import PonyBot

Button = discord.ui.Button[discord.ui.View]


class JobButton(discord.ui.DynamicItem[Button], template=r"(?!)"):
    """Subclass with `action=`; set `look(index)` (Button keyword arguments) and `run`."""

    action: ClassVar[Action]

    def __init_subclass__(cls, *, action: Action, **kwargs: Any) -> None:
        super().__init_subclass__(template=template(action), **kwargs)
        cls.action = action

    def __init__(self, job_id: str, index: int | None = None) -> None:
        super().__init__(discord.ui.Button(custom_id=custom_id(self.action, job_id, index),
                                           **self.look(index)))
        self.job_id = job_id
        self.index = index

    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: Button,
                             match: re.Match[str], /) -> JobButton:
        index = match.groupdict().get("index")
        return cls(match["job_id"], int(index) if index is not None else None)

    async def callback(self, interaction: discord.Interaction[PonyBot]) -> None:
        async with answer_errors(interaction):
            await self.run(interaction.client, interaction)

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        raise NotImplementedError
