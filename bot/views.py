"""The buttons on a queued message, Cancel and ✏️ Edit (bot/edit_form.py); they keep working
after a restart (the job id lives in their custom_ids)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord

from bot.buttons import JobButton
from bot.edit_form import EditQueuedButton
from ponybot_core.custom_ids import Action

if TYPE_CHECKING:
    from bot.app import PonyBot


class CancelButton(JobButton, action=Action.CANCEL):
    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": "Cancel", "emoji": "✖️", "style": discord.ButtonStyle.secondary}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        text = await bot.cancelling.cancel(interaction, self.job_id)
        await interaction.response.send_message(text, ephemeral=True)


def queued_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    view.add_item(EditQueuedButton(job_id))
    return view
