"""`/settings`: each user's own defaults for `/pony` in this server, and a channel's.

    /settings show                      yours, this channel's, and what /pony uses here now
    /settings set [model] [size] [steps] [cfg] [count] [negative] [upscale]
    /settings clear [setting]           one of yours, or all of them
    /settings channel show|set|clear    this channel's defaults (set, clear: Manage Server)
    /settings server quality_prefix     captions with or without the model card's quality tags
                                        (`score_9, score_8_up, ...`; Manage Server)

Everything is answered privately. Values are checked as the `/pony` options are
(`bot.saved_settings.check`): one bad value refuses the command, naming the option, and nothing is
stored. The order in which saved defaults apply is `ponybot_request.resolution`'s alone.

What a server saved lives as long as the bot is there: when the bot is removed from a server,
its settings, its users' and channels' saved defaults and its pause go (and a paused server's
waiting jobs, which no one could resume now); a deleted channel's or thread's defaults go
with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands
from redis.exceptions import RedisError

from bot import guild_settings, saved_settings
from bot.choices import model_choices
from bot.errors import UserFacingError
from bot.guild_settings import SettingsUnavailable
from bot.permissions import require_server_admin
from bot.saved_settings import Layers, SavedSettings
from ponybot_core.config import Config, ModelEntry
from ponybot_request.options import PonyOptions
from ponybot_request.resolution import SETTINGS, Layer, Setting, resolve

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

SizeChoice = Literal["square", "portrait", "landscape"]
_OPTIONS = dict(
    model="the checkpoint /pony draws with",
    size="square, portrait or landscape",
    steps="sampling steps (more = slower, finer)",
    cfg="how closely to follow the tags",
    count="how many pictures per /pony",
    negative="tags to keep out of every picture: grimdark, blood",
    upscale="upscale every picture with Real-ESRGAN before posting",
)
# Who gave a value, as "What /pony uses here" says it.
_WHOSE = {Layer.USER: "yours", Layer.CHANNEL: "this channel's", Layer.SERVER: "this server's",
          Layer.MODEL: "the model's", Layer.CONFIG: "the bot's"}


class SettingsCog(commands.GroupCog, group_name="settings",
                  group_description="Your defaults for /pony in this server"):
    channel = app_commands.Group(name="channel",
                                 description="This channel's defaults for /pony (admins set them)")
    server = app_commands.Group(name="server", description="This server's caption settings "
                                                           "(Manage Server)")

    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        # Settings saved before servers indexed them get indexed once, in the background: a
        # slow Redis never holds the bot's start.
        self.indexing: asyncio.Task[None] | None = None
        super().__init__()

    async def cog_load(self) -> None:
        self.indexing = asyncio.create_task(self._index_saved())

    async def cog_unload(self) -> None:
        if self.indexing is not None:
            self.indexing.cancel()

    async def _index_saved(self) -> None:
        try:
            added = await saved_settings.index_saved(self.bot.redis, self.bot.keys)
        except (RedisError, OSError) as exc:
            log.warning("could not index saved defaults (%r); the next start tries again", exc)
            return
        if added:
            log.info("indexed %d saved defaults by server", added)

    # --- what goes with a server or a channel ---------------------------------------------

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """The bot was removed from the server (or the server deleted; an outage is
        `on_guild_unavailable`): forget what it saved there."""
        if self.indexing is not None:  # its old keys must be in the index first
            await asyncio.wait([self.indexing])
        redis, keys = self.bot.redis, self.bot.keys
        try:
            await guild_settings.forget(redis, keys, guild.id)
            saved = await saved_settings.forget_server(redis, keys, guild.id)
            cancelled = await self.bot.queue.forget_server(guild.id)
        except (RedisError, OSError) as exc:
            log.error("removed from guild %s but could not forget its settings: %r", guild.id,
                      exc)
            return
        log.info("removed from guild %s: forgot its settings, %d saved defaults, %d waiting "
                 "jobs of its pause", guild.id, saved, len(cancelled))
        self.bot.dispatch("server_forgotten", guild.id)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await self._forget_channel(channel.guild.id, channel.id)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        # The raw event: it comes for threads the bot never cached too.
        await self._forget_channel(payload.guild_id, payload.thread_id)

    async def _forget_channel(self, guild_id: int, channel_id: int) -> None:
        try:
            await saved_settings.forget_channel(self.bot.redis, self.bot.keys, guild_id, channel_id)
        except (RedisError, OSError) as exc:
            log.error("channel %s of guild %s was deleted but its defaults could not be: %r",
                      channel_id, guild_id, exc)
            return
        self.bot.dispatch("channel_forgotten", guild_id, channel_id)

    # --- yours ----------------------------------------------------------------------------

    @app_commands.command(name="show", description="Your defaults for /pony here, and what "
                                                   "/pony uses")
    async def show(self, interaction: discord.Interaction) -> None:
        await _reply(interaction, await self._overview(interaction))

    @app_commands.command(name="set", description="Save defaults for your /pony in this server")
    @app_commands.describe(**_OPTIONS)
    async def set_yours(
        self, interaction: discord.Interaction, model: str | None = None,
        size: SizeChoice | None = None, steps: int | None = None, cfg: float | None = None,
        count: int | None = None, negative: str | None = None, upscale: bool | None = None,
    ) -> None:  # fmt: skip
        key = self.bot.keys.user_settings(interaction.guild_id, interaction.user.id)
        saved = await self._save(key, interaction.guild_id, model=model, size=size,
                                 steps=steps, cfg=cfg, count=count, negative=negative,
                                 upscale=upscale)
        log.info("user %s in guild %s saved defaults %s", interaction.user.id,
                 interaction.guild_id, saved.to_hash())
        await _reply(interaction, f"✅ Saved your {_names(saved)}; `/pony` options still "
                                  f"override them.\n\n" + await self._overview(interaction))

    @app_commands.command(name="clear", description="Forget one of your defaults, or all")
    @app_commands.describe(setting="the one to forget (default: all of yours here)")
    async def clear_yours(self, interaction: discord.Interaction,
                          setting: Setting | None = None) -> None:
        key = self.bot.keys.user_settings(interaction.guild_id, interaction.user.id)
        with _store():
            await saved_settings.clear(self.bot.redis, key, setting,
                                 index=self._index(interaction.guild_id))
        what = f"your `{setting}` default" if setting else "all your defaults here"
        await _reply(interaction, f"🧹 Forgot {what}.\n\n" + await self._overview(interaction))

    # --- this channel's -------------------------------------------------------------------

    @channel.command(name="show", description="This channel's defaults for /pony")
    async def channel_show(self, interaction: discord.Interaction) -> None:
        await _reply(interaction, await self._overview(interaction))

    @channel.command(name="set", description="Save defaults for /pony in this channel "
                                             "(Manage Server)")
    @app_commands.describe(**_OPTIONS)
    async def channel_set(
        self, interaction: discord.Interaction, model: str | None = None,
        size: SizeChoice | None = None, steps: int | None = None, cfg: float | None = None,
        count: int | None = None, negative: str | None = None, upscale: bool | None = None,
    ) -> None:  # fmt: skip
        guild_id = require_server_admin(interaction, "set this channel's defaults")
        key = self.bot.keys.channel_settings(guild_id, interaction.channel_id or 0)
        saved = await self._save(key, guild_id, model=model, size=size, steps=steps, cfg=cfg,
                                 count=count, negative=negative, upscale=upscale)
        log.info("channel %s in guild %s: defaults %s saved by user %s",
                 interaction.channel_id, guild_id, saved.to_hash(), interaction.user.id)
        await _reply(interaction, f"✅ Saved this channel's {_names(saved)}; each user's "
                                  "`/settings` and `/pony` options still override them.\n\n"
                     + await self._overview(interaction))

    @channel.command(name="clear", description="Forget one of this channel's defaults, or all "
                                               "(Manage Server)")
    @app_commands.describe(setting="the one to forget (default: all of this channel's)")
    async def channel_clear(self, interaction: discord.Interaction,
                            setting: Setting | None = None) -> None:
        guild_id = require_server_admin(interaction, "change this channel's defaults")
        key = self.bot.keys.channel_settings(guild_id, interaction.channel_id or 0)
        with _store():
            await saved_settings.clear(self.bot.redis, key, setting, index=self._index(guild_id))
        what = f"this channel's `{setting}` default" if setting else "all this channel's defaults"
        await _reply(interaction, f"🧹 Forgot {what}.\n\n" + await self._overview(interaction))

    # --- this server's ----------------------------------------------------------------------

    @server.command(name="quality_prefix", description="Start captions with the model card's "
                                                       "quality tags (Manage Server)")
    @app_commands.describe(on="on: `score_9, score_8_up, ...` as the card's template; off: "
                              "only what users type")
    async def server_quality_prefix(self, interaction: discord.Interaction, on: bool) -> None:
        guild_id = require_server_admin(interaction, "change this server's captions")
        with _store():
            await guild_settings.set_quality_prefix(self.bot.redis, self.bot.keys, guild_id, on)
        log.info("guild %s: quality prefix %s by user %s", guild_id, "on" if on else "off",
                 interaction.user.id)
        await _reply(interaction, ("✅ Captions here start with the model card's quality tags."
                                   if on else "✅ Captions here no longer start with the model "
                                   "card's quality tags.")
                     + "\n\n" + await self._overview(interaction))

    @set_yours.autocomplete("model")
    @channel_set.autocomplete("model")
    async def _model_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot.config, current)

    # --- shared ---------------------------------------------------------------------------

    def _index(self, guild_id: int | None) -> str | None:
        """The server's index of saved defaults; None in DMs (no server to leave)."""
        return None if guild_id is None else self.bot.keys.saved_settings_index(guild_id)

    async def _save(self, key: str, guild_id: int | None, **values: object) -> SavedSettings:
        """Check every value as /pony would, then store them together, or nothing."""
        checked = saved_settings.check(self.bot.config, values)
        if not checked.given():
            raise UserFacingError("Give at least one option to save (model, size, steps, cfg, "
                                  "count, negative, upscale).")
        with _store():
            await saved_settings.save(self.bot.redis, key, checked, index=self._index(guild_id))
        return checked

    async def _overview(self, interaction: discord.Interaction) -> str:
        config = self.bot.config
        with _store():
            layers = await saved_settings.load_layers(
                self.bot.redis, self.bot.keys, config, guild_id=interaction.guild_id,
                channel_id=interaction.channel_id, user_id=interaction.user.id)
        return overview(config, layers, in_guild=interaction.guild_id is not None)


def overview(config: Config, layers: Layers, *, in_guild: bool) -> str:
    """Yours, the channel's, and what a `/pony` without options uses here, worked out by
    the same resolution as `/pony` itself."""
    lines = ["**Your defaults here** (`/settings set`, `/settings clear`)",
             _saved(config, layers.user)]
    if in_guild:
        lines += ["**This channel's defaults** (admins: `/settings channel set`)",
                  _saved(config, layers.channel)]
    resolved = resolve(PonyOptions.parse(config, tags=""), config, layers)
    used = [f"{resolved.describe(name)} ({_WHOSE[resolved.sources[name]]})"
            for name in SETTINGS if name != "negative"]
    negative = resolved.options.negative
    used.append(f"negative {_inline(negative)} ({_WHOSE[resolved.sources['negative']]})"
                if negative else "no negative tags")
    lines += ["**What `/pony` uses here** (its own options override all of this)",
              " · ".join(used)]
    if in_guild and (resolved.model.caption.quality_prefix or not layers.server.quality_prefix):
        lines.append(_quality_prefix(resolved.model, layers.server.quality_prefix))
    lines += [f"-# {note}" for note in layers.notes]
    return "\n".join(lines)


def _quality_prefix(model: ModelEntry, on: bool) -> str:
    """The server's quality-prefix setting, and what it means for the model /pony uses here."""
    prefix = model.caption.quality_prefix
    state = "on" if on else "off"
    if not prefix:
        return (f"Quality prefix ({state}; admins: `/settings server quality_prefix`): "
                f"{model.name} has none")
    tags = _inline(", ".join(prefix))
    return (f"Quality prefix ({state}; admins: `/settings server quality_prefix`): {model.name} "
            + (f"captions start with {tags}" if on else f"captions leave out {tags}"))


def _saved(config: Config, saved: SavedSettings) -> str:
    if not saved.given():
        return "-# none"
    shown = []
    for name, value in saved.given().items():
        if name == "model":
            value = f"{config.model(str(value)).name} (`{value}`)"
        elif name == "negative":
            value = _inline(str(value))
        elif name == "upscale":
            value = "on" if value else "off"
        elif name == "cfg":
            value = f"{value:g}"
        shown.append(f"{name} {value}")
    return " · ".join(shown)


def _names(saved: SavedSettings) -> str:
    names = [f"`{name}`" for name in saved.given()]
    return ("default " if len(names) == 1 else "defaults ") + ", ".join(names)


def _inline(text: str, limit: int = 200) -> str:
    """User text shown as inline code: mentions and markdown stay inert."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "`" + text.replace("`", "ˋ") + "`"


async def _reply(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(text[:2000], ephemeral=True)


@contextlib.contextmanager
def _store() -> Iterator[None]:
    """Redis failures become one clear sentence for the user (nothing was changed)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("settings unavailable: %r", exc)
        raise SettingsUnavailable() from exc


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(SettingsCog(bot))
