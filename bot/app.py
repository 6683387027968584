"""The discord.py bot: loads the cogs, syncs slash commands, owns the Redis connection."""

from __future__ import annotations

import hashlib
import json
import logging

import discord
from discord import app_commands
from discord.ext import commands
from redis.asyncio import Redis

from bot import metrics
from bot.answering import send_ephemeral, what_to_say
from bot.cancelling import Cancelling
from bot.submit import Submitter
from ponybot_core.config import LoadedConfig
from ponybot_core.keys import Keys
from ponybot_core.poster import Poster
from ponybot_core.queue import Producer, QueueReads
from ponybot_core.replicas import ReplicaWait

log = logging.getLogger(__name__)

# The cogs, loaded by name as discord.py intends: one concern each.
EXTENSIONS = ("cogs.pony", "cogs.results", "cogs.models", "cogs.queue", "cogs.positions",
              "cogs.settings", "cogs.edit",
              "cogs.upscale", "cogs.parameters", "cogs.safety")


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard Discord sends a server's events to; DMs go to shard 0.
    https://discord.com/developers/docs/events/gateway#sharding"""
    return 0 if not guild_id else (guild_id >> 22) % shard_count


class PonyBot(commands.AutoShardedBot):
    """Every bot process is an AutoShardedBot: alone it runs every shard Discord recommends;
    with `[discord] shard_count` / `shard_ids` it runs its range, and N such processes share one
    Redis (what each must do alone, e.g. a queued message's edits, it does for its own servers
    only: `owns`)."""

    def __init__(self, loaded: LoadedConfig, redis: Redis) -> None:
        # Slash commands only: the guilds intent is all we need (no privileged intents).
        intents = discord.Intents.none()
        intents.guilds = True
        discord_config = loaded.config.discord
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            shard_count=discord_config.shard_count,
            # None = every shard: what discord.py does without the argument (its type says list).
            shard_ids=discord_config.shard_ids,  # type: ignore[arg-type]
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
                              cancelled_ttl_s=q.cancelled_ttl_s, dead_ttl_s=q.dead_ttl_s,
                              replica_wait=ReplicaWait.from_config(loaded.config.redis.sentinel))
        self.queue_reads = QueueReads(redis, self.keys)
        self.submitter = Submitter(self.config, redis, self.keys, self.queue,
                                   announce=lambda job, message_id: self.dispatch(
                                       "job_queued", job, message_id))
        self.cancelling = Cancelling(self.queue, self.queue_reads, self.config, Poster(self))
        metrics.instrument(self)  # interactions, refusals, ack latency (bot/metrics.py)

    def owns(self, guild_id: int | None) -> bool:
        """Whether this process runs the shard that gets `guild_id`'s events (None or 0: DMs).
        Before the shard count is known (not connected yet) every server counts as ours."""
        if self.shard_ids is None or self.shard_count is None:
            return True
        return shard_of(guild_id, self.shard_count) in self.shard_ids

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

