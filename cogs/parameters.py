"""**Parameters**, a message context menu (Apps → Parameters on any message with a picture):
reads the AUTOMATIC1111 `parameters` the picture carries (PNG text, or WebP/JPEG EXIF) and shows
them privately; with a **Draw this** button when the picture was made with one of our models.

The picture is downloaded here, in the bot, within ponybot_core.downloads' bounds (Discord's
hosts only, size, time, type from the bytes, pixels counted before any decoding), after the
interaction is deferred: a large file may take longer than Discord's 3 seconds. The button's
custom_id names the parsed parameters, kept in Redis (`keys.drawable`) as long as results
are; a click is an ordinary queued job through `bot.submitter`, as `/pony` is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import guild_settings, policy
from bot.buttons import JobButton
from bot.drawable import drawing_fields, our_model, why_not_drawable
from bot.errors import UserFacingError
from bot.submit import request_fields
from bot.uploads import checked_upload
from ponybot_core.config import Config
from ponybot_core.custom_ids import Action
from ponybot_core.downloads import DownloadFailed, DownloadRefused, download_image, open_image
from ponybot_core.image_parameters import A1111Parameters, parameters_of, parse_parameters
from ponybot_core.job import Job, new_job_id
from ponybot_core.logs import JobLog
from ponybot_core.messages import code_block

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

_FIELD = 1024
# Pictures the bot downloads at once for the Parameters menu.
MAX_DOWNLOADS = 4


def _read_parameters(data: bytes, max_pixels: int) -> str | None:
    return parameters_of(open_image(data, max_pixels=max_pixels))


async def picture_parameters(config: Config, attachment: discord.Attachment) -> str | None:
    """The parameters text of an attached picture (checked with `checked_upload` first), None
    when it has none; UserFacingError when it cannot be fetched or read."""
    uploads = config.uploads
    try:
        downloaded = await download_image(attachment.url, hosts=uploads.hosts,
                                          max_bytes=uploads.max_bytes,
                                          timeout_s=uploads.timeout_s)
        return await asyncio.to_thread(_read_parameters, downloaded.data, uploads.max_pixels)
    except (DownloadRefused, DownloadFailed) as exc:
        raise UserFacingError(f"`{attachment.filename}` cannot be read: {exc}.") from exc


def parameters_embed(parsed: A1111Parameters, config: Config, filename: str) -> discord.Embed:
    """What the picture says it was drawn with."""
    embed = discord.Embed(title="Parameters", description=f"of `{filename}`",
                          colour=discord.Colour.purple())
    embed.add_field(name="Prompt", value=code_block(parsed.prompt, limit=_FIELD - 10),
                    inline=False)
    if parsed.negative_prompt:
        embed.add_field(name="Negative prompt",
                        value=code_block(parsed.negative_prompt, limit=_FIELD - 10), inline=False)
    ours = our_model(config, parsed.model)
    model = parsed.model or "—"
    embed.add_field(name="Model", value=(f"{ours.name} (`{ours.id}`)" if ours else model)[:_FIELD])
    for name, value in (("Seed", parsed.seed), ("Steps", parsed.steps),
                        ("Sampler", parsed.sampler), ("CFG", parsed.cfg),
                        ("Size", f"{parsed.width}×{parsed.height}" if parsed.width else None),
                        ("Denoising strength", parsed.denoising_strength)):
        if value is not None:
            embed.add_field(name=name, value=(f"{value:g}" if isinstance(value, float)
                                              else str(value))[:_FIELD])
    return embed


async def draw(bot: PonyBot, interaction: discord.Interaction, parameters_id: str) -> None:
    """**Draw this**: the parameters kept for this button, as a new queued job."""
    raw = await bot.redis.get(bot.keys.drawable(parameters_id))
    guild = await guild_settings.load(bot.redis, bot.keys, interaction.guild_id)
    if raw is None:
        raise UserFacingError("⌛ These parameters have expired; use Parameters on the picture "
                              "again.")
    parsed = A1111Parameters.model_validate_json(raw)
    problem = why_not_drawable(parsed, bot.config)  # the config may have changed since
    if problem:
        raise UserFacingError(f"This picture cannot be drawn here: {problem}.")
    policy.check_caption(parsed.prompt, config=bot.config,
                         age_restricted=policy.is_age_restricted(interaction),
                         blocked_tags=guild.blocked_tags, earlier="This picture")
    fields, notes = drawing_fields(parsed, bot.config)
    job = Job(**request_fields(interaction), **fields)
    JobLog(log, job.id).info("draw from parameters %s by user=%s", parameters_id, job.user_id)
    await bot.submitter.submit(interaction, job, notes=["drawn from a picture's parameters",
                                                        *notes], guild=guild)


class DrawButton(JobButton, action=Action.DRAW):
    """Its id names parameters in Redis (keys.drawable), not a job."""

    @classmethod
    def look(cls, index: int | None) -> dict[str, Any]:
        return {"label": "Draw this", "emoji": "🎨", "style": discord.ButtonStyle.primary}

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await draw(bot, interaction, self.job_id)


class ParametersCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Parameters", callback=self.parameters)
        # Each download holds up to `uploads.max_bytes` (and its decoding more) in the bot's
        # memory: a few at a time, the rest wait (deferred, so Discord waits with them).
        self.downloads = asyncio.Semaphore(MAX_DOWNLOADS)

    async def cog_load(self) -> None:
        # discord.py has no context-menu decorator inside a cog: add it to the tree by hand.
        self.bot.tree.add_command(self.menu)
        self.bot.add_dynamic_items(DrawButton)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(DrawButton)

    async def parameters(self, interaction: discord.Interaction, message: discord.Message) -> None:
        config = self.bot.config
        pictures = [a for a in message.attachments
                    if (a.content_type or "").startswith("image/") or a.width]
        if not pictures:
            raise UserFacingError("This message has no picture attached.")
        picture = pictures[0]
        # What Discord says about it first: a bad picture is refused without a download.
        checked_upload(picture, config.uploads, max_pixels=config.uploads.max_pixels)
        await interaction.response.defer(ephemeral=True, thinking=True)
        started = time.perf_counter()
        async with self.downloads:
            text = await picture_parameters(config, picture)
        log.info("parameters of %s (%d bytes) read in %.2f s: %s", picture.filename,
                 picture.size, time.perf_counter() - started, "found" if text else "none")
        if not text:
            raise UserFacingError(f"`{picture.filename}` carries no generation parameters "
                                  "(PNG `parameters` text or EXIF UserComment).")
        parsed = parse_parameters(text)
        embed = parameters_embed(parsed, config, picture.filename)
        if len(pictures) > 1:
            embed.set_footer(text=f"the first of {len(pictures)} pictures")
        problem = why_not_drawable(parsed, config)
        if problem:
            embed.add_field(name="Draw this", value=f"Not offered: {problem}.", inline=False)
            await interaction.followup.send(embed=embed, ephemeral=True)
            return
        parameters_id = new_job_id()
        await self.bot.redis.set(self.bot.keys.drawable(parameters_id),
                                 parsed.model_dump_json(), ex=config.queue.result_ttl_s)
        view = discord.ui.View(timeout=None)
        view.add_item(DrawButton(parameters_id))
        await interaction.followup.send(embed=embed, view=view, ephemeral=True)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(ParametersCog(bot))
