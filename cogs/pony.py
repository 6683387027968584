"""`/pony`: turn derpibooru tags into a queued job (ponybot_request.jobs.build_job) and answer with
its place in the queue."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands
from redis.exceptions import RedisError

from bot.choices import model_choices
from bot.errors import QueueUnavailable
from bot.submit import channel_of, requester
from bot.uploads import checked_upload
from ponybot_request import clip_tokens
from ponybot_request.jobs import PonyRequest, build_job
from ponybot_request.options import PonyOptions

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)


class PonyCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        # CLIP's vocabulary takes a fifth of a second to load: here, before the bot takes
        # commands, rather than on the first caption, where the first user after a start and
        # every command that came with theirs would wait for it.
        clip_tokens.count("")

    @app_commands.command(name="pony", description="Draw ponies from derpibooru tags")
    @app_commands.describe(
        tags="derpibooru tags: twilight sparkle, unicorn, solo (-tag to avoid; artist:x or by=x)",
        negative="tags to keep out of the picture",
        seed="same seed + same options = same picture",
        steps="sampling steps (more = slower, finer)",
        cfg="how closely to follow the tags (7.5 is the classic)",
        count="how many pictures (1-4)",
        size="square 512×512, portrait 512×768, landscape 768×512",
        model="which checkpoint (default: your /settings, the channel's, else this server's)",
        upscale="upscale the pictures with Real-ESRGAN before posting (slower, larger files)",
        image="draw from your picture (PNG, JPEG or WebP): img2img, its shape kept",
        strength="with image: how far from your picture, 0.05 (close) to 1 (new); default 0.6",
        hires="draw, enlarge and refine: larger, sharper pictures without doubled limbs (slower)",
    )
    async def pony(
        self,
        interaction: discord.Interaction,
        tags: str,
        negative: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        count: int | None = None,
        size: Literal["square", "portrait", "landscape"] | None = None,
        model: str | None = None,
        upscale: bool | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
        hires: bool | None = None,
    ) -> None:
        config = self.bot.config
        options = PonyOptions.parse(
            config, tags=tags, negative=negative, seed=seed, steps=steps, cfg=cfg,
            count=count, size=size, model=model,
        )  # fmt: skip
        upload = None if image is None else checked_upload(
            image, config.uploads, max_pixels=config.uploads.max_pixels)
        try:  # saved settings and live workers: the one read before the enqueue
            saved = await self.bot.submitter.read(interaction)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable() from exc
        layers = saved.layers
        request = PonyRequest(by=requester(interaction), options=options, upscale=upscale,
                              image=upload, strength=strength, hires=bool(hires))
        built = build_job(request, channel_of(interaction, layers.server), layers,
                          config=config)
        await self.bot.submitter.submit(interaction, built.job, notes=built.notes,
                                        guild=layers.server, workers=saved.workers)

    @pony.autocomplete("model")
    async def _model_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot.config, current)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(PonyCog(bot))
