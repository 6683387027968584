"""Buttons that keep working after a restart: the job id lives in the custom_id."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from redis.exceptions import RedisError

from bot.cancelling import cancel_job
from bot.errors import QueueUnavailable, UserFacingError
from ponybot_core.custom_ids import Action, custom_id, template

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from bot.app import PonyBot


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
                   template=template(Action.CANCEL)):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.secondary,
                                           emoji="✖️", custom_id=custom_id(Action.CANCEL, job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> CancelButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[PonyBot]) -> None:
        # Component errors do not reach the app-command error handler: answer here.
        try:
            text = await cancel_job(interaction.client, interaction, self.job_id)
        except UserFacingError as exc:
            text = str(exc)
        except (RedisError, OSError) as exc:
            log.warning("cancel of job=%s refused, queue unavailable: %r", self.job_id, exc)
            text = str(QueueUnavailable())
        await interaction.response.send_message(text, ephemeral=True)


def queued_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view
