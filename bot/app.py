"""The discord.py bot: loads the cogs, syncs slash commands, owns the Redis connection."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import pkgutil

import discord
from discord import app_commands
from discord.ext import commands
from redis.asyncio import Redis

import cogs
from bot.errors import UserFacingError
from bot.position_updates import PositionUpdater
from core.config import Settings
from core.jobqueue import JobQueue
from core.keys import Keys

log = logging.getLogger(__name__)



def extensions() -> list[str]:
    """Every module in cogs/ is a discord.py extension: adding a cog is adding a file."""
    return [f"cogs.{m.name}" for m in pkgutil.iter_modules(cogs.__path__) if not m.ispkg]


class PonyBot(commands.Bot):
    def __init__(self, settings: Settings, redis: Redis) -> None:
        # Slash commands only: the guilds intent is all we need (no privileged intents).
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            owner_ids=set(settings.config.discord.owners) or None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
        )
        self.settings = settings
        self.config = settings.config
        self.redis = redis
        self.keys = Keys(settings.config.redis.key_prefix)
        self.queue = JobQueue(redis, self.keys, max_attempts=settings.config.queue.max_attempts,
                              result_ttl_s=settings.config.queue.result_ttl_s)

    async def setup_hook(self) -> None:
        self.tree.on_error = self.on_app_command_error
        for extension in extensions():
            await self.load_extension(extension)
        try:
            await self.queue.ensure_group()
        except Exception:  # Redis may come up later; /pony reports it per request.
            log.warning("Redis unreachable at start; /pony will say so until it is back")
        await self.sync_commands()
        self.position_updater = PositionUpdater(self)
        self._background = [asyncio.create_task(self.position_updater.run())]

    async def sync_commands(self) -> None:
        """Sync only when the command definitions changed: Discord rate-limits command
        registration, and a restart loop must not burn through it."""
        guilds = [discord.Object(id=g) for g in self.config.discord.sync_guilds]
        for guild in guilds:
            self.tree.copy_global_to(guild=guild)
        payload = [c.to_dict(self.tree) for c in self.tree.get_commands()]
        digest = hashlib.sha256(
            json.dumps([payload, sorted(g.id for g in guilds)], sort_keys=True).encode()
        ).hexdigest()
        key = f"{self.keys.prefix}:commands_digest:{self.application_id}"
        try:
            if await self.redis.get(key) == digest.encode():
                log.info("slash commands unchanged; not syncing")
                return
        except Exception:
            log.warning("Redis unreachable; syncing commands anyway")
        targets: list[discord.Object | None] = list(guilds) or [None]
        for guild in targets:
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d command(s) to %s", len(synced), guild.id if guild else "global")
        try:
            await self.redis.set(key, digest)
        except Exception:
            log.warning("could not record the command digest; will sync again next start")

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, UserFacingError):
            message = str(cause)
        elif isinstance(cause, app_commands.CheckFailure):
            message = str(cause) or "You are not allowed to use this command here."
        else:
            log.exception("command %s failed", interaction.command, exc_info=cause)
            message = "Something went wrong on our side; nothing was queued. Please try again."
        await send_ephemeral(interaction, message)

    async def close(self) -> None:
        for task in getattr(self, "_background", []):
            task.cancel()
        await super().close()
        await self.redis.aclose()


async def send_ephemeral(interaction: discord.Interaction, message: str) -> None:
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the user: %s", message)
