"""What a worker publishes about itself every few seconds (read by `/model list`, `/queue
workers` and the scheduler); the key expires when the worker stops beating."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from core.keys import Keys


class WorkerHeartbeat(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    host: str
    device: str
    # Model ids loaded on the device, most recently used first.
    loaded: list[str] = []
    # Model id -> why it failed to load (shown to admins by `/model info`).
    failed: dict[str, str] = {}
    current_job: str | None = None
    jobs_done: int = 0
    images_done: int = 0
    # Recent throughput and the share of wall time spent sampling.
    images_per_s: float = 0.0
    busy_fraction: float = 0.0
    at: float


async def read_heartbeats(redis: Redis, keys: Keys) -> list[WorkerHeartbeat]:
    """Every live worker's heartbeat, sorted by name."""
    names = [k async for k in redis.scan_iter(match=keys.workers_pattern, count=100)]
    beats = []
    for raw in await redis.mget(names) if names else []:
        if raw:
            beats.append(WorkerHeartbeat.model_validate_json(raw))
    return sorted(beats, key=lambda b: b.name)
