"""What a worker publishes about itself every few seconds, read by `/model list`, `/queue
workers`, `/pony`'s availability check and `ponybot check`.

Each beat is a JSON key with a TTL (it vanishes when the worker stops beating) plus the worker's
name in a sorted set scored by the beat's time. Readers list workers from the set instead of
scanning the keyspace, skip members whose key has expired, and keep the set's scores as "last
seen" so the bot can say how long ago the last worker went away.
"""

from __future__ import annotations

from typing import cast

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from ponybot_core.keys import Keys
from ponybot_core.redis_client import as_str

# Names of workers gone for longer than this are dropped from the set (bounded size: a new
# name per worker process).
FORGET_AFTER_S = 24 * 3600


class WorkerHeartbeat(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    host: str
    device: str
    # Model ids loaded on the device, most recently used first.
    loaded: list[str] = []
    # Model id -> why it failed to load (shown to admins by `/model info`).
    failed: dict[str, str] = {}
    # Model ids whose files this worker found usable (`inference.models.inventory`); None = a worker
    # that does not report it (assumed to serve every configured model).
    serves: list[str] | None = None
    # Model or upscaler id -> why this worker cannot use it ("file missing: ...").
    unavailable: dict[str, str] = {}
    # Upscaler ids whose files this worker found usable; None = not reported.
    upscalers: list[str] | None = None
    # Model id -> seconds its last cold load took on this worker.
    load_s: dict[str, float] = {}
    current_job: str | None = None
    jobs_done: int = 0
    images_done: int = 0
    # Recent throughput and the share of wall time spent sampling.
    images_per_s: float = 0.0
    busy_fraction: float = 0.0
    at: float

    def can_serve(self, model_id: str) -> bool:
        return self.serves is None or model_id in self.serves

    def can_upscale(self) -> bool:
        return self.upscalers is None or bool(self.upscalers)


async def publish_heartbeat(redis: Redis, keys: Keys, beat: WorkerHeartbeat, ttl_s: float) -> None:
    """Record `beat` for `ttl_s` seconds (beat again well before it runs out)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.worker(beat.name), beat.model_dump_json(), px=int(ttl_s * 1000))
        pipe.zadd(keys.workers, {beat.name: beat.at})
        pipe.zremrangebyscore(keys.workers, "-inf", beat.at - FORGET_AFTER_S)
        await pipe.execute()


async def remove_heartbeat(redis: Redis, keys: Keys, name: str) -> None:
    """A worker stopping: it leaves the live list at once; its last-beat time stays for the
    "no worker since ..." note."""
    await redis.delete(keys.worker(name))


async def read_heartbeats(redis: Redis, keys: Keys) -> list[WorkerHeartbeat]:
    """Every live worker's heartbeat, sorted by name."""
    # redis-py types ZRANGE's reply for WITHSCORES too; without it the reply is the members.
    names = cast("list[bytes]", await redis.zrange(keys.workers, 0, -1))
    if not names:
        return []
    raws = await redis.mget([keys.worker(as_str(n)) for n in names])
    beats = [WorkerHeartbeat.model_validate_json(raw) for raw in raws if raw]
    return sorted(beats, key=lambda b: b.name)


async def last_beat_at(redis: Redis, keys: Keys) -> float | None:
    """When any worker last beat (epoch seconds), alive or not; None if none ever did."""
    newest = await redis.zrange(keys.workers, -1, -1, withscores=True)
    return float(newest[0][1]) if newest else None
