"""The discord.py bot: loads the cogs, syncs slash commands, owns the Redis connection."""

from __future__ import annotations

import hashlib
import json
import logging

import discord
from discord import app_commands
from discord.ext import commands
from redis.asyncio import Redis

from bot.answering import send_ephemeral, what_to_say
from bot.cancelling import Cancelling
from bot.submit import Submitter
from ponybot_core.config import LoadedConfig
from ponybot_core.keys import Keys
from ponybot_core.poster import Poster
from ponybot_core.queue import Producer, QueueReads

log = logging.getLogger(__name__)

# The cogs, loaded by name as discord.py intends: one concern each.
EXTENSIONS = ("cogs.pony", "cogs.results", "cogs.models", "cogs.queue", "cogs.positions",
              "cogs.settings", "cogs.edit",
              "cogs.upscale", "cogs.parameters")


class PonyBot(commands.Bot):
    def __init__(self, loaded: LoadedConfig, redis: Redis) -> None:
        # Slash commands only: the guilds intent is all we need (no privileged intents).
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            owner_ids=set(loaded.config.discord.owners) or None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
        )
        self.loaded = loaded
        self.config = loaded.config
        self.redis = redis
        self.keys = Keys(loaded.config.redis.key_prefix)
        q = loaded.config.queue
        self.queue = Producer(redis, self.keys, result_ttl_s=q.result_ttl_s,
                              cancelled_ttl_s=q.cancelled_ttl_s, dead_ttl_s=q.dead_ttl_s)
        self.queue_reads = QueueReads(redis, self.keys)
        self.submitter = Submitter(self.config, redis, self.keys, self.queue,
                                   announce=lambda job, message_id: self.dispatch(
                                       "job_queued", job, message_id))
        self.cancelling = Cancelling(self.queue, self.queue_reads, self.config, Poster(self))

    async def setup_hook(self) -> None:
        self.tree.error(self.on_app_command_error)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands()

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
        key = self.keys.commands_digest(self.application_id or 0)
        try:
            if await self.redis.get(key) == digest.encode():
                log.info("slash commands unchanged; not syncing")
                return
        except Exception:
            log.warning("Redis unreachable; syncing commands anyway")
        targets: list[discord.Object | None] = list(guilds) or [None]
        for target in targets:
            synced = await self.tree.sync(guild=target)
            log.info("synced %d command(s) to %s", len(synced),
                     "global" if target is None else target.id)
        try:
            await self.redis.set(key, digest)
        except Exception:
            log.warning("could not record the command digest; will sync again next start")

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await send_ephemeral(interaction, what_to_say(interaction, error))

    async def close(self) -> None:
        await super().close()
        await self.redis.aclose()

