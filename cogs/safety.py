"""`/safety`: a server admin's choice for the picture check (inference/safety): what a
flagged picture becomes (withheld, spoilered, or posted in an age-restricted channel), and
whether age-restricted channels are checked too. Stored with the server's settings
(bot.safety_settings); the bot puts it on each job it queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import guild_settings, safety_settings
from bot.errors import UserFacingError
from bot.permissions import require_server_admin
from bot.safety_settings import SafetyChoice
from ponybot_core.job import Flagged

if TYPE_CHECKING:
    from bot.app import PonyBot


class SafetyCog(commands.GroupCog, group_name="safety",
                group_description="The picture check for channels that are not age-restricted"):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="show", description="What the picture check does here")
    async def show(self, interaction: discord.Interaction) -> None:
        guild_id = require_server_admin(interaction)
        choice = await self._choice(guild_id)
        configured = self.bot.config.safety.path is not None
        lines = [choice.describe() if configured else
                 "⚠️ This bot has no picture check configured: pictures are checked by their "
                 "prompt only. Its owner can set one up (`[safety]` in config.toml)."]
        await _reply(interaction, "\n".join(lines))

    @app_commands.command(name="flagged", description="What happens to a flagged picture")
    @app_commands.describe(
        action="withhold (default), spoiler, or redirect to an age-restricted channel",
        channel="redirect: the age-restricted channel flagged pictures go to")
    async def flagged(self, interaction: discord.Interaction, action: Flagged,
                      channel: discord.TextChannel | None = None) -> None:
        guild_id = require_server_admin(interaction)
        choice = await self._choice(guild_id)
        if action is Flagged.REDIRECT:
            if channel is None:
                raise UserFacingError("Name the age-restricted channel flagged pictures go to "
                                      "(`channel:`).")
            if not channel.is_nsfw():
                raise UserFacingError(f"{channel.mention} is not age-restricted: flagged "
                                      "pictures can only go to an age-restricted channel.")
            if channel.guild.id != guild_id:
                raise UserFacingError("That channel is in another server.")
        elif channel is not None:
            raise UserFacingError("`channel:` goes with `redirect` only.")
        updated = choice.model_copy(update={
            "flagged": action, "redirect_channel_id": channel.id if channel else None})
        await safety_settings.save(self.bot.redis, self.bot.keys, guild_id, updated)
        await _reply(interaction, f"✅ {updated.describe()}")

    @app_commands.command(name="age-restricted",
                          description="Check pictures in age-restricted channels too")
    async def age_restricted(self, interaction: discord.Interaction, check: bool) -> None:
        guild_id = require_server_admin(interaction)
        updated = (await self._choice(guild_id)).model_copy(
            update={"check_age_restricted": check})
        await safety_settings.save(self.bot.redis, self.bot.keys, guild_id, updated)
        await _reply(interaction, f"✅ {updated.describe()}")

    async def _choice(self, guild_id: int) -> SafetyChoice:
        return (await guild_settings.load(self.bot.redis, self.bot.keys, guild_id)).safety


async def _reply(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(text[:2000], ephemeral=True,
                                            allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(SafetyCog(bot))
