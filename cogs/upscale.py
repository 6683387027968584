"""`/upscale image:<picture> [upscaler]`: any picture through a configured upscaler, as an
ordinary queued job (position, per-user cap, fairness, pause), the way the U buttons upscale an
earlier result. The worker downloads the picture (ponybot_core.downloads), upscales it and fits
the result under Discord's attachment limit."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import guild_settings
from bot.errors import UserFacingError
from bot.submit import request_fields
from bot.uploads import checked_upload
from ponybot_core.config import Config
from ponybot_core.job import Job, JobKind

if TYPE_CHECKING:
    from bot.app import PonyBot


def upscaler_id(config: Config, requested: str | None) -> str | None:
    """The upscaler asked for (None: the default), refused when none or not that one is
    configured."""
    ids = [u.id for u in config.upscalers]
    if not ids:
        raise UserFacingError("Upscaling is not available: no upscaler is configured on this bot.")
    if requested is not None and requested not in ids:
        raise UserFacingError(f"Unknown upscaler {requested!r}; choose one of {', '.join(ids)}.")
    return requested


def _job_side(pixels: int) -> int:
    # A job's width and height are multiples of 8, at least 64: the picture's, rounded up.
    return max(64, math.ceil(pixels / 8) * 8)


class UpscaleCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    @app_commands.command(name="upscale", description="Upscale any picture with Real-ESRGAN")
    @app_commands.describe(image="the picture (PNG, JPEG or WebP)",
                           upscaler="which upscaler (default: the bot's)")
    async def upscale(self, interaction: discord.Interaction, image: discord.Attachment,
                      upscaler: str | None = None) -> None:
        config = self.bot.config
        chosen = upscaler_id(config, upscaler)
        source = checked_upload(image, config.uploads,
                                max_pixels=config.uploads.upscale_max_pixels)
        guild = await guild_settings.load(self.bot.redis, self.bot.keys, interaction.guild_id)
        # An upscale draws nothing: the model and sampling fields only satisfy the job's shape
        # (the server's model, so the queue's checks pass as for a U button).
        model = guild_settings.model_for(config, guild)
        job = Job(
            **request_fields(interaction),
            kind=JobKind.UPSCALE,
            model_id=model.id,
            tags=source.filename,
            prompt="",
            negative_prompt="",
            seed=0,
            steps=config.defaults.steps,
            cfg=config.defaults.cfg,
            sampler=config.defaults.sampler,
            width=_job_side(source.width),
            height=_job_side(source.height),
            source_upload=source,
            upscaler_id=chosen,
        )
        await self.bot.submitter.submit(interaction, job, guild=guild)

    @upscale.autocomplete("upscaler")
    async def _upscaler_choices(self, interaction: discord.Interaction,
                                current: str) -> list[app_commands.Choice[str]]:
        needle = current.casefold().strip()
        return [app_commands.Choice(name=f"{u.name} ({u.id})"[:100], value=u.id)
                for u in self.bot.config.upscalers
                if needle in u.id.casefold() or needle in u.name.casefold()][:25]


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(UpscaleCog(bot))
