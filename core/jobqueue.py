"""The job queue on Redis Streams, shared by the bot (enqueue) and the workers (take, ack).

Layout (keys from `core.keys`):
- one stream of job ids, consumed by the consumer group `workers`: XREADGROUP hands an entry to
  one worker and keeps it pending until XACK, so a worker that dies leaves its jobs pending and
  another reclaims them with XAUTOCLAIM once their lease (idle time) runs out;
- one hash per job with the job's JSON and its mutable state: the Discord message that shows it,
  attempts, status, and `posted` — written after a successful post and before XACK, so a job that
  is reclaimed after its post is acknowledged instead of posted again;
- a dead-letter stream for jobs that failed `max_attempts` times.
Acknowledged entries are deleted, so the stream holds exactly the unfinished jobs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.job import Job
from core.keys import WORKER_GROUP, Keys

# Pending entries idle longer than any lease are reclaimed at once.
_IDLE_FOREVER_MS = 10**12


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    POSTED = "posted"
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    """A job handed to one worker; it stays pending in the group until acked."""

    entry_id: str
    job: Job
    attempts: int
    message_id: int | None
    already_posted: bool


# XADD and the state hash in one step, so a job is never in the stream without its state
# (or the other way round), and the position is read in the same atomic step.
_ENQUEUE = """
local entry = redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[1])
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 'job', ARGV[2], 'entry', entry, 'status', 'queued', 'attempts', 0,
           'enqueued_at', t[1] .. '.' .. string.format('%06d', t[2]))
return {entry, redis.call('XLEN', KEYS[1])}
"""

# Counting the attempt and marking the job running in one step with reading its state.
_START = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if redis.call('HGET', KEYS[1], 'status') ~= 'posted' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1],
             'started_at', t[1] .. '.' .. string.format('%06d', t[2]))
end
return {attempts, redis.call('HGET', KEYS[1], 'job'), redis.call('HGET', KEYS[1], 'status'),
        redis.call('HGET', KEYS[1], 'message_id') or ''}
"""


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys, *, max_attempts: int = 3) -> None:
        self.redis = redis
        self.keys = keys
        self.max_attempts = max_attempts
        self._enqueue = redis.register_script(_ENQUEUE)
        self._start = redis.register_script(_START)

    async def ensure_group(self) -> None:
        # From id 0: jobs enqueued before the first worker ever started are not skipped.
        try:
            await self.redis.xgroup_create(self.keys.stream, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- bot side -------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> int:
        """Queue the job; returns its position (1 = next to run or running)."""
        _entry, length = await self._enqueue(
            keys=[self.keys.stream, self.keys.job(job.id)], args=[job.id, job.to_json()]
        )
        return int(length)

    async def set_message(self, job_id: str, message_id: int) -> None:
        """Record the Discord message that shows the job, for the worker to edit."""
        await self.redis.hset(self.keys.job(job_id), "message_id", str(message_id))

    async def status(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def length(self) -> int:
        return int(await self.redis.xlen(self.keys.stream))

    # --- worker side ----------------------------------------------------------------------

    async def take(self, consumer: str, *, count: int, block_ms: int) -> list[Delivery]:
        """New jobs for this worker; blocks up to `block_ms` when there are none."""
        reply = await self.redis.xreadgroup(
            WORKER_GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block_ms
        )
        entries = reply[0][1] if reply else []
        return await self._start_all(consumer, entries)

    async def reclaim(self, consumer: str, *, min_idle_s: float, count: int) -> list[Delivery]:
        """Jobs whose worker stopped renewing their lease (it crashed or hung)."""
        reply = await self.redis.xautoclaim(
            self.keys.stream, WORKER_GROUP, consumer, int(min_idle_s * 1000), "0-0", count=count
        )
        entries = [e for e in reply[1] if e and e[1] is not None]
        return await self._start_all(consumer, entries)

    async def renew(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of jobs this worker is still working on (the lease)."""
        if entry_ids:
            await self.redis.xclaim(
                self.keys.stream, WORKER_GROUP, consumer, 0, list(entry_ids), justid=True
            )

    async def mark_posted(
        self, job_id: str, message_id: int | None, timings: dict[str, float] | None = None
    ) -> None:
        """Called after a successful post and before `ack`: a reclaim will not post again.
        `timings` (seconds spent per step) feed ETAs and the benchmarks."""
        fields = {"status": JobStatus.POSTED.value, "posted_at": f"{time.time():.6f}"}
        fields.update({f"{name}_s": f"{value:.6f}" for name, value in (timings or {}).items()})
        if message_id is not None:
            fields["result_message_id"] = str(message_id)
        await self.redis.hset(self.keys.job(job_id), mapping=fields)

    async def ack(self, delivery: Delivery, *, result_ttl_s: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.stream, WORKER_GROUP, delivery.entry_id)
            pipe.xdel(self.keys.stream, delivery.entry_id)
            pipe.expire(self.keys.job(delivery.job.id), result_ttl_s)
            await pipe.execute()

    async def release(self, consumer: str, delivery: Delivery) -> None:
        """Give a job back for another attempt now: it stays pending, and marking it idle
        for ages makes the next `reclaim` (by any worker) take it without waiting the lease."""
        await self.redis.hset(self.keys.job(delivery.job.id), "status", JobStatus.QUEUED.value)
        await self.redis.xclaim(
            self.keys.stream, WORKER_GROUP, consumer, 0, [delivery.entry_id],
            idle=_IDLE_FOREVER_MS, justid=True,
        )  # fmt: skip

    async def dead_letter(self, delivery: Delivery, reason: str, *, result_ttl_s: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, {"job_id": delivery.job.id, "reason": reason[:2000]})
            pipe.hset(
                self.keys.job(delivery.job.id),
                mapping={"status": JobStatus.FAILED.value, "error": reason[:2000]},
            )
            pipe.xack(self.keys.stream, WORKER_GROUP, delivery.entry_id)
            pipe.xdel(self.keys.stream, delivery.entry_id)
            pipe.expire(self.keys.job(delivery.job.id), result_ttl_s)
            await pipe.execute()

    async def _start_all(self, consumer: str, entries: list) -> list[Delivery]:
        deliveries = []
        for entry_id, fields in entries:
            entry_id = _text(entry_id)
            job_id = _text(fields.get(b"job_id") or fields.get("job_id") or "")
            started = await self._start(keys=[self.keys.job(job_id)], args=[consumer])
            if not started:
                # The job's state is gone (cleared or expired): nothing left to do for it.
                await self._drop_entry(entry_id)
                continue
            attempts, job_json, status, message_id = started
            try:
                job = Job.from_json(job_json)
            except ValidationError as exc:
                await self._drop_entry(entry_id)
                await self.redis.xadd(
                    self.keys.dead, {"job_id": job_id, "reason": f"unreadable job: {exc}"[:2000]}
                )
                continue
            deliveries.append(
                Delivery(
                    entry_id=entry_id,
                    job=job,
                    attempts=int(attempts),
                    message_id=int(message_id) if message_id else None,
                    already_posted=_text(status) == JobStatus.POSTED.value,
                )
            )
        return deliveries

    async def _drop_entry(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.stream, WORKER_GROUP, entry_id)
            pipe.xdel(self.keys.stream, entry_id)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
