"""`/upscale image:<picture> [upscaler]`: any picture through a configured upscaler, as an
ordinary queued job (position, per-user cap, fairness, pause), the way the U buttons upscale an
earlier result. The worker downloads the picture (ponybot_core.downloads), upscales it and fits
the result under Discord's attachment limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import guild_settings
from bot.choices import upscaler_choices
from bot.saved_settings import Layers
from bot.submit import channel_of, requester
from bot.uploads import checked_upload
from ponybot_request.jobs import UpscaleRequest, build_job

if TYPE_CHECKING:
    from bot.app import PonyBot


class UpscaleCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="upscale", description="Upscale any picture with Real-ESRGAN")
    @app_commands.describe(image="the picture (PNG, JPEG or WebP)",
                           upscaler="which upscaler (default: the bot's)")
    async def upscale(self, interaction: discord.Interaction, image: discord.Attachment,
                      upscaler: str | None = None) -> None:
        config = self.bot.config
        source = checked_upload(image, config.uploads,
                                max_pixels=config.uploads.upscale_max_pixels)
        guild = await guild_settings.load(self.bot.redis, self.bot.keys, interaction.guild_id)
        built = build_job(UpscaleRequest(by=requester(interaction), image=source,
                                         upscaler_id=upscaler),
                          channel_of(interaction, guild), Layers(server=guild), config=config)
        await self.bot.submitter.submit(interaction, built.job, guild=guild)

    @upscale.autocomplete("upscaler")
    async def _upscaler_choices(self, interaction: discord.Interaction,
                                current: str) -> list[app_commands.Choice[str]]:
        return upscaler_choices(self.bot.config, current)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(UpscaleCog(bot))
