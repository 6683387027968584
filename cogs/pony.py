"""`/pony`: turn derpibooru tags into a queued job and answer with its place in the queue."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands
from redis.exceptions import RedisError

from bot import defaults, policy
from bot.errors import QueueUnavailable, UserFacingError
from bot.hires_request import hires_pass
from bot.options import PonyOptions, model_choices
from bot.prompting import render_prompt
from bot.resolution import resolve
from bot.submit import request_fields
from bot.uploads import img2img_from
from ponybot_core.job import MAX_SEED, Job, JobKind

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)


class PonyCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot

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
        try:  # the user's, the channel's and the server's saved settings: one round trip
            layers = await defaults.load_layers(
                self.bot.redis, self.bot.keys, config, guild_id=interaction.guild_id,
                channel_id=interaction.channel_id, user_id=interaction.user.id)
        except (RedisError, OSError) as exc:
            raise QueueUnavailable() from exc
        guild = layers.server
        resolved = resolve(options, config, layers, upscale=upscale)
        # From here on the options carry the resolved model and negative tags.
        options, entry, generation, upscale = (
            resolved.options, resolved.model, resolved.generation, resolved.upscale)
        age_restricted = policy.is_age_restricted(interaction)
        rendered, notes = render_prompt(options, entry, config, age_restricted=age_restricted,
                                        blocked_tags=guild.blocked_tags)
        notes = (*resolved.notes(), *notes)
        if upscale and not config.upscalers:
            raise UserFacingError("Upscaling is not available: no upscaler is configured on "
                                  "this bot. Ask again with `upscale:false` (it may come from "
                                  "your `/settings` or the channel's).")
        img2img = img2img_from(config, image, strength, size_given=size is not None)
        job = Job(
            **request_fields(interaction),
            model_id=entry.id,
            tags=options.tags.strip(),
            negative_tags=options.negative,
            prompt=rendered.positive,
            negative_prompt=rendered.negative,
            seed=generation.seed if generation.seed is not None else secrets.randbelow(MAX_SEED),
            seeded=generation.seed is not None,
            steps=generation.steps,
            cfg=generation.cfg,
            sampler=generation.sampler,
            width=generation.width,
            height=generation.height,
            count=generation.count,
            upscale=bool(upscale),
        )
        if img2img is not None:
            job = img2img.apply(job)
        if hires:  # planned from the size the job has now: the first pass's
            if job.kind is not JobKind.GENERATE:
                raise UserFacingError("`hires` draws from tags: ask for it without `image`.")
            job = job.model_copy(
                update={"hires": hires_pass(config, job.width, job.height, job.steps)})
        await self.bot.submitter.submit(interaction, job, notes=notes, guild=guild)

    @pony.autocomplete("model")
    async def _model_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot.config, current)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(PonyCog(bot))
