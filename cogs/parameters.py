"""**Parameters**, a message context menu (Apps → Parameters on any message with a picture):
reads the AUTOMATIC1111 `parameters` the picture carries (PNG text, or WebP/JPEG EXIF) and shows
them privately; with a **Draw this** button when the picture was made with one of our models.

The picture is downloaded here, in the bot, within ponybot_core.downloads' bounds (Discord's
hosts only, size, time, type from the bytes), after the interaction is deferred: a large file
may take longer than Discord's 3 seconds. Reading it decodes no pixel
(ponybot_core.image_parameters.find_parameters walks the file's chunks) and, like parsing
the text, runs in a thread, a few pictures at a time: a hostile picture costs its own answer
time, never the event loop's. A picture that cannot be read is answered with why. The button's
custom_id names the parsed parameters, kept in Redis (`keys.drawable`, one key per picture) as
long as results are; a click is a job built by ponybot_request.jobs.build_job and queued
through `bot.submitter`, as `/pony`'s is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import guild_settings
from bot.buttons import JobButton
from bot.errors import UserFacingError
from bot.submit import channel_of, requester
from bot.uploads import checked_upload
from ponybot_core.config import Config
from ponybot_core.custom_ids import Action
from ponybot_core.downloads import DownloadFailed, DownloadRefused, download_image
from ponybot_core.image_parameters import (
    PARAMETERS_LIMIT,
    A1111Parameters,
    UnreadablePicture,
    find_parameters,
    parse_parameters,
)
from ponybot_core.logs import JobLog
from ponybot_core.messages import code_block
from ponybot_request.drawable import drawable_id, for_draw_this, our_model, why_not_drawable
from ponybot_request.jobs import DrawThisRequest, build_job

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

_FIELD = 1024
# Pictures the bot downloads at once for the Parameters menu.
MAX_DOWNLOADS = 4


def read_picture(data: bytes) -> A1111Parameters | None:
    """What a downloaded picture says it was drawn with, None when it says nothing; raises
    UnreadablePicture. CPU work, bounded (a walk over the file's chunks, a parse of at most
    PARAMETERS_LIMIT characters) but not free: run it in a thread."""
    found = find_parameters(data)
    return parse_parameters(found.text, cut=found.cut) if found else None


async def picture_parameters(config: Config,
                             attachment: discord.Attachment) -> A1111Parameters | None:
    """The parameters of an attached picture (checked with `checked_upload` first), None when
    it has none; UserFacingError when it cannot be fetched or read."""
    uploads = config.uploads
    try:
        downloaded = await download_image(attachment.url, hosts=uploads.hosts,
                                          max_bytes=uploads.max_bytes,
                                          timeout_s=uploads.timeout_s)
    except (DownloadRefused, DownloadFailed) as exc:
        raise UserFacingError(f"`{attachment.filename}` cannot be read: {exc}.") from exc
    try:
        return await asyncio.to_thread(read_picture, downloaded.data)
    except UnreadablePicture as exc:
        raise UserFacingError(f"`{attachment.filename}` is damaged or not a picture we can "
                              f"read: {exc}.") from exc


def fitted(value: str, limit: int = _FIELD) -> str:
    """`value` cut to what Discord takes in an embed field (else it refuses the whole answer)."""
    return value if len(value) <= limit else value[:limit - 1] + "…"


def code_field(text: str) -> str:
    """`text` in a code block that fits an embed field: code_block spends two characters on
    each backtick, so a prompt of backticks needs a shorter cut."""
    limit = _FIELD - 10
    block = code_block(text, limit=limit)
    while len(block) > _FIELD:
        limit -= len(block) - _FIELD
        block = code_block(text, limit=limit)
    return block


def parameters_embed(parsed: A1111Parameters, config: Config, filename: str) -> discord.Embed:
    """What the picture says it was drawn with, every field within Discord's limits (1,024
    characters a field, 6,000 an embed) whatever the picture says."""
    embed = discord.Embed(title="Parameters", description=f"of `{fitted(filename, 200)}`",
                          colour=discord.Colour.purple())
    embed.add_field(name="Prompt", value=code_field(parsed.prompt), inline=False)
    if parsed.negative_prompt:
        embed.add_field(name="Negative prompt", value=code_field(parsed.negative_prompt),
                        inline=False)
    ours = our_model(config, parsed.model)
    model = parsed.model or "—"
    embed.add_field(name="Model", value=fitted(f"{ours.name} (`{ours.id}`)" if ours else model))
    for name, value in (("Seed", parsed.seed), ("Steps", parsed.steps),
                        ("Sampler", parsed.sampler), ("CFG", parsed.cfg),
                        ("Size", f"{parsed.width}×{parsed.height}" if parsed.width else None),
                        ("Denoising strength", parsed.denoising_strength)):
        if value is not None:
            embed.add_field(name=name, value=fitted(f"{value:g}" if isinstance(value, float)
                                                    else str(value), 200))
    if parsed.cut:
        embed.add_field(name="Cut short", inline=False,
                        value=f"The text is longer than {PARAMETERS_LIMIT:,} characters: only "
                              f"its first {PARAMETERS_LIMIT:,} characters were read.")
    return embed


async def draw(bot: PonyBot, interaction: discord.Interaction, parameters_id: str) -> None:
    """**Draw this**: the parameters kept for this button, as a new job in this channel, through
    the channel's policy like every job (ponybot_request.jobs.build_job)."""
    raw = await bot.redis.get(bot.keys.drawable(parameters_id))
    guild = await guild_settings.load(bot.redis, bot.keys, interaction.guild_id)
    if raw is None:
        raise UserFacingError("⌛ These parameters have expired; use Parameters on the picture "
                              "again.")
    request = DrawThisRequest(by=requester(interaction),
                              parameters=A1111Parameters.model_validate_json(raw))
    built = build_job(request, channel_of(interaction, guild), None, config=bot.config)
    JobLog(log, built.job.id).info("draw from parameters %s by user=%s", parameters_id,
                                   built.job.user_id)
    await bot.submitter.submit(interaction, built.job, notes=built.notes, guild=guild)


async def keep_drawable(bot: PonyBot, parsed: A1111Parameters) -> str:
    """Keep the parameters for a Draw this button, as long as results are kept; the id the
    button names. One key per picture, however often the menu is used on it: the id is the
    parameters' own digest, and keeping them again only renews the key's time."""
    parsed = for_draw_this(parsed, bot.config)  # not the rest of what the picture says
    parameters_id = drawable_id(parsed)
    await bot.redis.set(bot.keys.drawable(parameters_id), parsed.model_dump_json(),
                        ex=bot.config.queue.result_ttl_s)
    return parameters_id


class DrawButton(JobButton, action=Action.DRAW):
    """Its id names parameters in Redis (keys.drawable), not a job; its look is the table's
    (ponybot_core.custom_ids.BUTTONS)."""

    async def run(self, bot: PonyBot, interaction: discord.Interaction) -> None:
        await draw(bot, interaction, self.job_id)


class ParametersCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Parameters", callback=self.parameters)
        # Each download holds up to `uploads.max_bytes` in the bot's memory and its reading
        # takes a thread: a few at a time, the rest wait (deferred, so Discord waits with them).
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
            parsed = await picture_parameters(config, picture)
        log.info("parameters of %s (%d bytes) read in %.2f s: %s", picture.filename,
                 picture.size, time.perf_counter() - started,
                 "none" if parsed is None else "cut" if parsed.cut else "found")
        if parsed is None:
            raise UserFacingError(f"`{picture.filename}` carries no generation parameters "
                                  "(PNG `parameters` text or EXIF UserComment).")
        embed = parameters_embed(parsed, config, picture.filename)
        if len(pictures) > 1:
            embed.set_footer(text=f"the first of {len(pictures)} pictures")
        problem = why_not_drawable(parsed, config)
        if problem:
            embed.add_field(name="Draw this", value=fitted(f"Not offered: {problem}."),
                            inline=False)
            await interaction.followup.send(embed=embed, ephemeral=True)
            return
        parameters_id = await keep_drawable(self.bot, parsed)
        view = discord.ui.View(timeout=None)
        view.add_item(DrawButton(parameters_id))
        await interaction.followup.send(embed=embed, view=view, ephemeral=True)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(ParametersCog(bot))
