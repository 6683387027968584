"""`/model`: the checkpoints this bot offers, and each server's default model and blocked tags.

    /model list             every configured model, its tag style and which workers have it
    /model info [model]     one model in detail, load failures, this server's setting
    /model set <model>      this server's default for /pony            (Manage Server)
    /model block <tags>     /pony refuses these tags in this server    (Manage Server)
    /model unblock <tags>   lifts that                                 (Manage Server)

Discord only hides whole top-level commands by permission, and `/model list` is for everyone,
so the admin subcommands check Manage Server themselves. The settings live in
`bot.guild_settings`; live worker state comes from their heartbeats (`ponybot_core.heartbeat`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands
from redis.exceptions import RedisError

from bot import availability, guild_settings
from bot.choices import model_choices
from bot.errors import UserFacingError
from bot.guild_settings import GuildSettings, SettingsUnavailable
from bot.permissions import require_server_admin
from bot.submit import is_age_restricted
from ponybot_core.config import Architecture, CaptionProfile, Config, LongPrompts, ModelEntry
from ponybot_core.heartbeat import WorkerHeartbeat, read_heartbeats
from ponybot_request import tags

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

# Discord's message content limit, less room for a closing note.
_CONTENT_LIMIT = 2000


class ModelsCog(
    commands.GroupCog,
    group_name="model",
    group_description="The models this bot draws with, and this server's choice",
):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        super().__init__()

    # --- for everyone ---------------------------------------------------------------------

    @app_commands.command(name="list", description="The models you can draw with")
    async def list_models(self, interaction: discord.Interaction) -> None:
        config = self.bot.config
        guild, beats, problem = await self._live_state(interaction.guild_id)
        default = guild_settings.model_for(config, guild)
        where = "this server's default" if interaction.guild_id else "the default"
        lines = [f"**Models** (⭐ = {where}; pick one per picture with `/pony model:`)"]
        for entry in config.models:
            star = "⭐ " if entry.id == default.id else ""
            description = f" — {entry.description}" if entry.description else ""
            loaded = _workers_with(entry.id, beats)
            where_loaded = f"loaded on {loaded}" if loaded else "not loaded on a live worker"
            if not problem:
                where_loaded += f" · {availability.model_status(entry.id, beats)}"
            lines.append(f"{star}**{entry.name}** `{entry.id}`{description}")
            lines.append(f"-# {_style(entry.caption)} · {where_loaded}")
        lines.append(f"-# {problem}" if problem else f"-# {_count(len(beats), 'live worker')}")
        await interaction.response.send_message(_fit(lines), ephemeral=True)

    @app_commands.command(name="info", description="One model in detail")
    @app_commands.describe(model="a model from /model list (default: this server's)")
    async def info(self, interaction: discord.Interaction, model: str | None = None) -> None:
        config = self.bot.config
        guild, beats, problem = await self._live_state(interaction.guild_id)
        default = guild_settings.model_for(config, guild)
        entry = _entry(config, model) if model else default
        await interaction.response.send_message(
            _fit(
                _describe(
                    entry,
                    config,
                    guild,
                    beats,
                    is_default=entry.id == default.id,
                    in_guild=interaction.guild_id is not None,
                    age_restricted=is_age_restricted(interaction.channel),
                    problem=problem,
                )
            ),
            ephemeral=True,
        )

    # --- Manage Server ----------------------------------------------------------------------

    @app_commands.command(name="set", description="Set this server's default model for /pony")
    @app_commands.describe(model="a model from /model list")
    async def set_default(self, interaction: discord.Interaction, model: str) -> None:
        guild_id = require_server_admin(interaction, "change this server's default model")
        entry = _entry(self.bot.config, model)
        with _settings_store():
            await guild_settings.set_model(self.bot.redis, self.bot.keys, guild_id, entry.id)
        log.info(
            "guild %s: default model set to %s by user %s", guild_id, entry.id, interaction.user.id
        )
        # Public: everyone drawing here should know which model they now get.
        await interaction.response.send_message(
            f"✅ `/pony` in this server now draws with **{entry.name}** (`{entry.id}`) "
            "unless `model:` picks another."
        )

    @app_commands.command(name="block", description="Refuse /pony prompts with these tags here")
    @app_commands.describe(tags="derpibooru tags, comma-separated: gore, artist:someone")
    async def block(self, interaction: discord.Interaction, tags: str) -> None:
        guild_id = require_server_admin(interaction, "block tags on this server")
        wanted = _tags_to_change(tags, "block")
        with _settings_store():
            blocked = await guild_settings.block(self.bot.redis, self.bot.keys, guild_id, wanted)
        log.info("guild %s: blocked %s by user %s", guild_id, wanted, interaction.user.id)
        await interaction.response.send_message(
            f"🚫 Blocked {_tag_list(wanted)}: `/pony` here refuses prompts with "
            f"{'it' if len(wanted) == 1 else 'them'}.\n-# Blocked on this server now: "
            f"{_tag_list(blocked, limit=1200)}",
            ephemeral=True,
        )

    @app_commands.command(name="unblock", description="Allow tags that were blocked here")
    @app_commands.describe(tags="blocked tags to allow again, comma-separated")
    async def unblock(self, interaction: discord.Interaction, tags: str) -> None:
        guild_id = require_server_admin(interaction, "unblock tags on this server")
        wanted = _tags_to_change(tags, "unblock")
        with _settings_store():
            lifted, blocked = await guild_settings.unblock(
                self.bot.redis, self.bot.keys, guild_id, wanted
            )
        absent = [t for t in wanted if t not in lifted]
        lines = []
        if lifted:
            lines.append(f"✅ Unblocked {_tag_list(lifted)}.")
        if absent:
            lines.append(
                f"{_tag_list(absent)} {'was' if len(absent) == 1 else 'were'} not blocked."
            )
        lines.append(f"-# Blocked on this server now: {_tag_list(blocked, limit=1200)}")
        log.info("guild %s: unblocked %s by user %s", guild_id, lifted, interaction.user.id)
        await interaction.response.send_message(_fit(lines), ephemeral=True)

    # --- helpers ----------------------------------------------------------------------------

    @set_default.autocomplete("model")
    @info.autocomplete("model")
    async def _model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot.config, current)

    async def _live_state(
        self, guild_id: int | None
    ) -> tuple[GuildSettings, list[WorkerHeartbeat], str | None]:
        """The server's settings and the live workers. These commands only read, so when
        Redis is down they still show the registry, with a note instead of a failure."""
        redis, keys = self.bot.redis, self.bot.keys
        try:
            guild, beats = await asyncio.gather(
                guild_settings.load(redis, keys, guild_id), read_heartbeats(redis, keys)
            )
        except (RedisError, OSError, ValueError) as exc:
            log.warning("could not read settings or heartbeats: %r", exc)
            return (
                GuildSettings(),
                [],
                ("Redis is unreachable: live workers and this server's settings are not shown."),
            )
        return guild, beats, None


def _describe(
    entry: ModelEntry,
    config: Config,
    guild: GuildSettings,
    beats: list[WorkerHeartbeat],
    *,
    is_default: bool,
    in_guild: bool,
    age_restricted: bool,
    problem: str | None,
) -> list[str]:
    star = (" ⭐ this server's default" if in_guild else " ⭐ the default") if is_default else ""
    lines = [f"**{entry.name}** (`{entry.id}`){star}"]
    if entry.description:
        lines.append(entry.description)
    lines.append(f"File `{_plain(entry.path.name)}` · format {entry.resolved_format().value}")
    lines += _caption_profile(entry, age_restricted=age_restricted,
                              quality_prefix=guild.quality_prefix)
    sampler = (entry.sampler or config.defaults.sampler).value
    steps = entry.steps or config.defaults.steps
    cfg = entry.cfg or config.defaults.cfg
    # Clip skip and sizes only where they are the model's own: /model info must fit one
    # Discord message, and an SD 1.x model at [sizes] with clip skip 1 says nothing new.
    skip = f" · clip skip {entry.clip_skip}" if entry.clip_skip != 1 else ""
    lines.append(f"Defaults: sampler {sampler} · {steps} steps · cfg {cfg:g}{skip}")
    if entry.base in _FAMILIES or entry.sizes:
        sizes = config.model_sizes(entry)
        family = _FAMILIES.get(entry.base, "")
        lines.append(f"Sizes{f' ({family})' if family else ''}: " + " · ".join(
            f"{size.value} {d.width}×{d.height}" for size, d in sizes.items())
            + f" · hires up to {config.model_hires(entry).max_side} px")
    if problem:
        lines.append(f"-# {problem}")
    else:
        loaded = _workers_with(entry.id, beats)
        lines.append(
            f"Loaded on: {loaded}"
            if loaded
            else "Loaded on: no live worker (the first picture loads it)"
        )
        for beat in beats:
            if entry.id in beat.failed:
                lines.append(
                    f"⚠️ Failed to load on `{_plain(beat.name)}`: "
                    f"`{_plain(beat.failed[entry.id])[:300]}`"
                )
    if in_guild and not problem:
        if guild.is_stale(config):
            fallback = config.model(config.default_model)
            lines.append(
                f"⚠️ This server's default `{_plain(guild.model or '')}` is no longer "
                f"configured; `/pony` uses **{fallback.name}** (`{fallback.id}`), the "
                "bot's default. `/model set` picks another."
            )
        lines.append(f"Blocked on this server: {_tag_list(guild.blocked_tags, limit=800)}")
    if entry.draws_nsfw and config.safety.path is None:
        # Issue 19: no picture check, and the model's card says it draws NSFW too.
        lines.append("⚠️ This model can draw NSFW pictures, and this bot has no picture check "
                     "configured: outside age-restricted channels only the prompt (`safe`) keeps "
                     "its pictures safe, which makes explicit ones less likely, not impossible.")
    return lines


# How /model info names a declared family (`base`); `auto` is read from the file by the worker.
_FAMILIES = {Architecture.SD1: "SD 1.x", Architecture.SD2: "SD 2.x",
             Architecture.SDXL: "SDXL"}


def _style(profile: CaptionProfile) -> str:
    joined = "space" if profile.separator.strip() == "" else "comma"
    inside = "`_` inside tags" if profile.underscores else "spaces kept inside tags"
    return f"{joined}-separated tags, {inside}"


def _caption_profile(entry: ModelEntry, *, age_restricted: bool,
                     quality_prefix: bool = True) -> list[str]:
    """How the model's captions were written, and one example worked through the rules."""
    profile = entry.caption
    lines = [f"**Captions**: {_style(profile)}"
             + (f" · from {_plain(profile.evidence)}" if profile.evidence else "")]
    if profile.quality_prefix:
        template = _plain(", ".join(profile.quality_prefix))
        lines.append(f"Template: `{template}, ` then your tags" if quality_prefix else
                     f"Template: the card's `{template}` is off on this server")
    if profile.rating_tags:
        words = [f"{rating}→{word}" for rating, word in profile.rating_tags.items()]
        lines.append(f"Ratings in the model's words: {_tag_list(words)}")
    if profile.replacements:
        rules = [f"{old}→{new or '(nothing)'}" for old, new in profile.replacements]
        lines.append(f"Rewrites, in order, also inside tags: {_tag_list(rules, limit=260)}")
    score = f"`{_plain(profile.score_tag)}` unless you type one" if profile.score_tag else "none"
    buckets = " ".join(str(n) for n in profile.score_buckets)
    lines.append(f"Score tag: {score}" + (f" (scr + {buckets})" if buckets else "")
                 + f" · ratings in captions: {_tag_list(profile.ratings)}")
    if profile.dropped_tags:
        lines.append(f"Left out, as training did: {_tag_list(profile.dropped_tags, limit=160)}")
    if profile.unseen_tags:
        lines.append(f"Never seen in training: {_tag_list(profile.unseen_tags, limit=160)}")
    if profile.long_prompts is LongPrompts.TRUNCATE:
        lines.append("Over CLIP's 75 tokens: the tags past it are left out, and you are told.")
    else:
        lines.append("Over CLIP's 75 tokens: encoded in 75-token chunks, and you are told "
                     "which tags lie past the first.")
    negatives = [*profile.negative_tags, *([] if age_restricted else profile.sfw_negative_tags)]
    if negatives:
        lines.append(f"Negative tags{'' if age_restricted else ' here'}: {_tag_list(negatives)}")
    prompt = tags.parse_tags(profile.example, profile=profile)
    rendered = tags.render(prompt, entry, age_restricted=age_restricted,
                           quality_prefix=quality_prefix)
    where = "an age-restricted channel" if age_restricted else "this channel"
    lines.append(f"Example in {where}: `{_plain(profile.example)}`")
    lines.append(f"→ the model sees `{_plain(rendered.positive)}`")
    lines += [f"-# {note}" for note in rendered.notes[:2]]
    return lines


@contextlib.contextmanager
def _settings_store() -> Iterator[None]:
    """Redis failures while changing settings become one clear sentence for the user."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("server settings unavailable: %r", exc)
        raise SettingsUnavailable() from exc


def _entry(config: Config, model_id: str) -> ModelEntry:
    try:
        return config.model(model_id.strip())
    except KeyError:
        ids = ", ".join(m.id for m in config.models)
        raise UserFacingError(
            f"Unknown model `{_plain(model_id)[:40]}`; choose one of {ids}."
        ) from None


def _tags_to_change(text: str, verb: str) -> list[str]:
    wanted = guild_settings.canonical_tags(text)
    if not wanted:
        raise UserFacingError(f"Give the tags to {verb}, comma-separated, e.g. `gore, grimdark`.")
    if len(wanted) > guild_settings.MAX_BLOCKED_TAGS:
        raise UserFacingError(
            f"That is {len(wanted)} tags; give at most {guild_settings.MAX_BLOCKED_TAGS} at once."
        )
    return wanted


def _workers_with(model_id: str, beats: list[WorkerHeartbeat]) -> str:
    return ", ".join(f"`{_plain(b.name)}`" for b in beats if model_id in b.loaded)


def _tag_list(values: Iterable[str], *, limit: int = 400) -> str:
    """Tags as inline code, cut (with a count of the rest) to stay within `limit` chars."""
    values = list(values)
    if not values:
        return "none"
    shown: list[str] = []
    used = 0
    for value in values:
        item = f"`{_plain(value)}`"
        if used + len(item) > limit:
            break
        shown.append(item)
        used += len(item) + 2
    rest = len(values) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


def _plain(text: str) -> str:
    """Text from config or a worker, safe inside inline code."""
    return text.replace("`", "'")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fit(lines: list[str]) -> str:
    """Whole lines up to Discord's 2000 characters; says so when some were left out."""
    kept: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        if used + len(line) + 1 > _CONTENT_LIMIT - 40:
            kept.append(f"-# …{len(lines) - i} more line(s) left out")
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(ModelsCog(bot))
