"""The job queue on Redis, shared by the bot (enqueue, cancel, pause) and the workers (take, ack).

Layout (every key from `core.keys`):
- waiting jobs: one list per server (FIFO) and a ring of servers that have waiting jobs; a
  worker takes from the ring's head and moves that server to the tail, so servers are served
  round-robin and one busy server never blocks the others for more than one job;
- running jobs: a stream with the consumer group `workers`. The take script adds the job to the
  stream and reads it into the taking worker's pending list in the same atomic step, so the
  group's pending list is exactly the running jobs. A worker that dies leaves them pending;
  another reclaims them with XAUTOCLAIM once their lease (idle time) has run out;
- one hash per job: its JSON and its state — message id, attempts, status, and `posted`, written
  after a successful post and before XACK, so a job reclaimed after its post is acknowledged,
  never posted twice;
- a dead-letter stream for jobs that failed `max_attempts` times.
Multi-key scripts build key names from the prefix, so this layout wants one Redis (or Sentinel),
not Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.job import Job
from core.keys import WORKER_GROUP, Keys

# Pending entries idle longer than any lease are reclaimed at once.
_IDLE_FOREVER_MS = 10**12
# How many servers the take script looks at to find a preferred or batchable job.
_RING_LOOKAHEAD = 64
GLOBAL = "*"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    POSTING = "posting"
    POSTED = "posted"
    FAILED = "failed"
    CANCELLED = "cancelled"


class UserLimitReached(Exception):
    def __init__(self, job_ids: list[str], limit: int) -> None:
        super().__init__(f"user has {len(job_ids)} jobs (limit {limit})")
        self.job_ids = job_ids
        self.limit = limit


@dataclass(frozen=True)
class Enqueued:
    position: int  # 1 = next to start (among non-paused servers)
    paused: bool  # the server (or everything) is paused: the job waits for a resume


@dataclass(frozen=True)
class Delivery:
    """A job handed to one worker; it stays pending in the group until acked."""

    entry_id: str
    job: Job
    attempts: int
    message_id: int | None
    already_posted: bool


@dataclass(frozen=True)
class Cancelled:
    job: Job | None
    # What the job was doing: queued (now removed), running (asked to stop at the next step),
    # or already finished / unknown.
    was: str
    message_id: int | None = None


@dataclass
class Snapshot:
    """The queue as admins see it: running jobs, then queued jobs in the order they will run."""

    running: list[tuple[Job, str, float]] = field(default_factory=list)  # job, worker, started
    queued: list[tuple[Job, int]] = field(default_factory=list)  # job, position
    paused_guilds: set[int] = field(default_factory=set)
    paused_globally: bool = False


_LUA_HELPERS = """
local prefix = ARGV[1]
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', t[2])
end
local function waiting(g) return prefix .. ':waiting:' .. g end
local function jobkey(id) return prefix .. ':job:' .. id end
local function is_paused(g)
  return redis.call('SISMEMBER', prefix .. ':paused', g) == 1
end
-- Jobs ahead of the job at 0-based index `idx` in server `g`'s list, under round-robin.
local function ahead_of(g, idx)
  local ring = redis.call('LRANGE', prefix .. ':ring', 0, -1)
  local ahead = idx
  local before = true
  for _, h in ipairs(ring) do
    if h == g then
      before = false
    elseif not is_paused(h) then
      local n = redis.call('LLEN', waiting(h))
      local turns = idx
      if before then turns = idx + 1 end
      if n < turns then turns = n end
      ahead = ahead + turns
    end
  end
  return ahead
end
"""

# KEYS: job hash, server's waiting list, ring, user's job set, wake list
# ARGV: prefix, job id, job JSON, server id, batch key, user id, user limit ('' = none)
_ENQUEUE = _LUA_HELPERS + """
local limit = tonumber(ARGV[7])
if limit and redis.call('SCARD', KEYS[4]) >= limit then
  return {-1, redis.call('SMEMBERS', KEYS[4])}
end
redis.call('HSET', KEYS[1], 'job', ARGV[3], 'status', 'queued', 'attempts', 0,
           'guild', ARGV[4], 'user', ARGV[6], 'compat', ARGV[5], 'enqueued_at', now())
local n = redis.call('RPUSH', KEYS[2], ARGV[2])
if n == 1 then redis.call('RPUSH', KEYS[3], ARGV[4]) end
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 63)
local paused = 0
if is_paused(ARGV[4]) or is_paused('*') then paused = 1 end
return {ahead_of(ARGV[4], n - 1) + 1, paused}
"""

# KEYS: ring, paused set, stream
# ARGV: prefix, consumer, max jobs, max preference wait (s), preferred model ids...
_TAKE = _LUA_HELPERS + """
if redis.call('SISMEMBER', KEYS[2], '*') == 1 then return {} end
local consumer = ARGV[2]
local max_jobs = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local preferred = {}
for i = 5, #ARGV do preferred[ARGV[i]] = true end

local function head(g) return redis.call('LINDEX', waiting(g), 0) end
local function compat_of(id) return redis.call('HGET', jobkey(id), 'compat') or '' end
local function model_of(id) return compat_of(id):match('^([^|]*)') end
local function pop(g)
  local id = redis.call('LPOP', waiting(g))
  redis.call('LREM', KEYS[1], 1, g)
  if redis.call('LLEN', waiting(g)) > 0 then redis.call('RPUSH', KEYS[1], g) end
  return id
end
local function servable()
  local out = {}
  for _, g in ipairs(redis.call('LRANGE', KEYS[1], 0, @LOOKAHEAD@)) do
    if not is_paused(g) and head(g) then table.insert(out, g) end
  end
  return out
end

local ring = servable()
if #ring == 0 then return {} end
-- 1. Round-robin's next job, unless a job for a model this worker has loaded is waiting at
--    another server's head and round-robin's job has not waited longer than max_wait.
local chosen = ring[1]
local first = head(chosen)
if next(preferred) ~= nil and not preferred[model_of(first)] then
  local t = redis.call('TIME')
  local waited = tonumber(t[1]) + tonumber(t[2]) / 1e6
                 - tonumber(redis.call('HGET', jobkey(first), 'enqueued_at'))
  if waited < max_wait then
    for _, g in ipairs(ring) do
      if preferred[model_of(head(g))] then chosen = g; break end
    end
  end
end
local taken = {pop(chosen)}
-- 2. Batch: keep following round-robin while its next job can share the pipeline call.
local compat = compat_of(taken[1])
while #taken < max_jobs do
  local nxt = servable()[1]
  if not nxt or compat_of(head(nxt)) ~= compat then break end
  table.insert(taken, pop(nxt))
end
-- 3. Into the stream and this worker's pending list in one step: no window where a job is
--    neither waiting nor pending.
local out = {}
for _, id in ipairs(taken) do
  redis.call('XADD', KEYS[3], '*', 'job_id', id)
end
local read = redis.call('XREADGROUP', 'GROUP', 'workers', consumer, 'COUNT', #taken,
                        'STREAMS', KEYS[3], '>')
for _, entry in ipairs(read[1][2]) do
  local id = entry[2][2]
  local key = jobkey(id)
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'status', 'running', 'worker', consumer, 'entry', entry[1],
             'started_at', now())
  table.insert(out, {entry[1], redis.call('HGET', key, 'job'), attempts,
                     redis.call('HGET', key, 'message_id') or '', 'running'})
end
return out
""".replace("@LOOKAHEAD@", str(_RING_LOOKAHEAD - 1))

# A reclaimed entry: count the attempt, mark it running unless it was posted already.
# KEYS: job hash; ARGV: prefix, consumer
_RESTART = _LUA_HELPERS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'posted' and status ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'started_at', now())
  status = 'running'
end
return {attempts, redis.call('HGET', KEYS[1], 'job'), status,
        redis.call('HGET', KEYS[1], 'message_id') or ''}
"""

# KEYS: job hash, ring; ARGV: prefix, job id, result ttl
_CANCEL = _LUA_HELPERS + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown', false, ''} end
local job = redis.call('HGET', KEYS[1], 'job')
local message = redis.call('HGET', KEYS[1], 'message_id') or ''
if status == 'queued' then
  local g = redis.call('HGET', KEYS[1], 'guild')
  redis.call('LREM', waiting(g), 0, ARGV[2])
  if redis.call('LLEN', waiting(g)) == 0 then redis.call('LREM', KEYS[2], 0, g) end
  redis.call('SREM', prefix .. ':user:' .. g .. ':' .. redis.call('HGET', KEYS[1], 'user'),
             ARGV[2])
  redis.call('HSET', KEYS[1], 'status', 'cancelled')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {'queued', job, message}
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return {'running', job, message}
end
return {status, job, message}
"""


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys, *, max_attempts: int = 3,
                 result_ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self.keys = keys
        self.max_attempts = max_attempts
        self.result_ttl_s = result_ttl_s
        self._enqueue = redis.register_script(_ENQUEUE)
        self._take = redis.register_script(_TAKE)
        self._restart = redis.register_script(_RESTART)
        self._cancel = redis.register_script(_CANCEL)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.stream, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- bot side -------------------------------------------------------------------------

    async def enqueue(self, job: Job, *, user_limit: int | None = None) -> Enqueued:
        """Queue the job behind its server's others; raises UserLimitReached over the cap."""
        k = self.keys
        reply = await self._enqueue(
            keys=[k.job(job.id), k.waiting(job.guild_key), k.ring,
                  k.user_jobs(job.guild_id, job.user_id), k.wake],
            args=[k.prefix, job.id, job.to_json(), job.guild_key, job.batch_key(), job.user_id,
                  "" if user_limit is None else user_limit],
        )  # fmt: skip
        if int(reply[0]) == -1:
            raise UserLimitReached(sorted(_text(i) for i in reply[1]), user_limit or 0)
        return Enqueued(position=int(reply[0]), paused=bool(int(reply[1])))

    async def set_message(self, job_id: str, message_id: int, *, position: int = 0) -> None:
        """Record the Discord message that shows the job (for the worker to edit) and the
        position it shows."""
        await self.redis.hset(self.keys.job(job_id), mapping={
            "message_id": str(message_id), "shown_position": str(position),
            "shown_at": f"{time.time():.3f}"})  # fmt: skip

    async def set_shown_position(self, job_id: str, position: int) -> None:
        await self.redis.hset(self.keys.job(job_id), mapping={
            "shown_position": str(position), "shown_at": f"{time.time():.3f}"})  # fmt: skip

    async def status(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def job(self, job_id: str) -> Job | None:
        raw = await self.redis.hget(self.keys.job(job_id), "job")
        return Job.from_json(raw) if raw else None

    async def length(self) -> int:
        """Unfinished jobs: queued in every server plus running."""
        ring = [_text(g) for g in await self.redis.lrange(self.keys.ring, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for g in ring:
                pipe.llen(self.keys.waiting(g))
            pipe.xlen(self.keys.stream)
            counts = await pipe.execute()
        return int(sum(counts))

    async def user_jobs(self, guild_id: int | None, user_id: int) -> list[str]:
        return sorted(_text(i) for i in await self.redis.smembers(
            self.keys.user_jobs(guild_id, user_id)))

    async def cancel(self, job_id: str) -> Cancelled:
        """Remove a queued job, or ask its worker to stop a running one at the next step."""
        was, job_json, message = await self._cancel(
            keys=[self.keys.job(job_id), self.keys.ring],
            args=[self.keys.prefix, job_id, self.result_ttl_s],
        )
        job = Job.from_json(job_json) if job_json else None
        return Cancelled(job=job, was=_text(was),
                         message_id=int(message) if message else None)

    async def clear(self, guild_id: int | None, user_id: int | None = None) -> list[Cancelled]:
        """Cancel a server's queued jobs (one user's, or everyone's)."""
        cancelled = []
        for raw in await self.redis.lrange(self.keys.waiting(guild_id or 0), 0, -1):
            job_id = _text(raw)
            if user_id is not None:
                owner = await self.redis.hget(self.keys.job(job_id), "user")
                if owner is None or int(owner) != user_id:
                    continue
            result = await self.cancel(job_id)
            if result.was == JobStatus.QUEUED:
                cancelled.append(result)
        return cancelled

    async def pause(self, guild_id: int | None) -> None:
        """Pause one server (its jobs stay queued, others keep flowing), or all with None."""
        await self.redis.sadd(self.keys.paused, GLOBAL if guild_id is None else guild_id)

    async def resume(self, guild_id: int | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(self.keys.paused, GLOBAL if guild_id is None else guild_id)
            pipe.lpush(self.keys.wake, *["1"] * 8)
            pipe.ltrim(self.keys.wake, 0, 63)
            await pipe.execute()

    async def paused(self) -> tuple[bool, set[int]]:
        """(everything paused, paused server ids)."""
        members = {_text(m) for m in await self.redis.smembers(self.keys.paused)}
        return GLOBAL in members, {int(m) for m in members if m != GLOBAL}

    async def snapshot(self, guild_id: int | None = None, *, all_guilds: bool = False) -> Snapshot:
        """Running and queued jobs with positions; one server's, or every server's."""
        paused_all, paused_guilds = await self.paused()
        snap = Snapshot(paused_guilds=paused_guilds, paused_globally=paused_all)
        ring = [int(_text(g)) for g in await self.redis.lrange(self.keys.ring, 0, -1)]
        queues = {g: [_text(i) for i in await self.redis.lrange(self.keys.waiting(g), 0, -1)]
                  for g in ring}
        for position, (g, job_id) in enumerate(_round_robin(ring, queues, paused_guilds), 1):
            if all_guilds or g == (guild_id or 0):
                job = await self.job(job_id)
                if job is not None:
                    snap.queued.append((job, position))
        for g in ring:
            if g in paused_guilds and (all_guilds or g == (guild_id or 0)):
                for job_id in queues[g]:
                    job = await self.job(job_id)
                    if job is not None:
                        snap.queued.append((job, 0))  # 0 = waits for a resume
        for entry_id, fields in await self.redis.xrange(self.keys.stream):
            del entry_id
            state = await self.status(_text(fields[b"job_id"]))
            if "job" not in state:
                continue
            job = Job.from_json(state["job"])
            if all_guilds or job.guild_key == (guild_id or 0):
                snap.running.append((job, state.get("worker", "?"),
                                     float(state.get("started_at", 0))))
        return snap

    async def positions(self) -> dict[str, int]:
        """Every queued job's position (paused servers' jobs are left out)."""
        _, paused_guilds = await self.paused()
        ring = [int(_text(g)) for g in await self.redis.lrange(self.keys.ring, 0, -1)]
        queues = {g: [_text(i) for i in await self.redis.lrange(self.keys.waiting(g), 0, -1)]
                  for g in ring}
        order = _round_robin(ring, queues, paused_guilds)
        return {job_id: position for position, (_, job_id) in enumerate(order, 1)}

    async def recent_job_seconds(self) -> float | None:
        """Mean worker time of recent jobs, for ETAs."""
        values = [float(v) for v in await self.redis.lrange(self.keys.durations, 0, 49)]
        return sum(values) / len(values) if values else None

    # --- worker side ----------------------------------------------------------------------

    async def take(self, consumer: str, *, count: int, block_s: float = 0.0,
                   preferred_models: Sequence[str] = (),
                   max_preference_wait_s: float = 30.0) -> list[Delivery]:
        """The next jobs by the queue policy (round-robin across servers, FIFO within, paused
        servers skipped, a loaded model preferred within a bound), up to `count` compatible
        ones; waits up to `block_s` for a wake-up when there are none."""
        deliveries = await self._take_now(consumer, count, preferred_models,
                                          max_preference_wait_s)
        if deliveries or block_s <= 0:
            return deliveries
        await self.redis.blpop([self.keys.wake], timeout=block_s)
        return await self._take_now(consumer, count, preferred_models, max_preference_wait_s)

    async def _take_now(self, consumer: str, count: int, preferred: Sequence[str],
                        max_wait: float) -> list[Delivery]:
        rows = await self._take(
            keys=[self.keys.ring, self.keys.paused, self.keys.stream],
            args=[self.keys.prefix, consumer, count, max_wait, *preferred],
        )
        deliveries = []
        for entry_id, job_json, attempts, message_id, _status in rows:
            delivery = await self._delivery(_text(entry_id), job_json, attempts, message_id,
                                            already_posted=False)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    async def reclaim(self, consumer: str, *, min_idle_s: float, count: int) -> list[Delivery]:
        """Jobs whose worker stopped renewing their lease (it crashed or hung)."""
        reply = await self.redis.xautoclaim(
            self.keys.stream, WORKER_GROUP, consumer, int(min_idle_s * 1000), "0-0", count=count
        )
        deliveries = []
        for entry in reply[1]:
            if not entry or entry[1] is None:
                continue
            entry_id, fields = _text(entry[0]), entry[1]
            job_id = _text(fields.get(b"job_id") or fields.get("job_id") or "")
            started = await self._restart(keys=[self.keys.job(job_id)],
                                          args=[self.keys.prefix, consumer])
            if not started:
                await self._drop_entry(entry_id)  # state gone (expired): nothing left to do
                continue
            attempts, job_json, status, message_id = started
            if _text(status) == JobStatus.CANCELLED:
                await self._drop_entry(entry_id)
                continue
            delivery = await self._delivery(entry_id, job_json, attempts, message_id,
                                            already_posted=_text(status) == JobStatus.POSTED)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    async def renew(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of jobs this worker is still working on (the lease)."""
        if entry_ids:
            await self.redis.xclaim(
                self.keys.stream, WORKER_GROUP, consumer, 0, list(entry_ids), justid=True
            )

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.hget(self.keys.job(job_id), "cancel"))

    async def mark_posting(self, job_id: str) -> None:
        """The job is being posted: a crash from here on may or may not have reached Discord.
        (Editing the queued message again is harmless: it shows the same result once.)"""
        await self.redis.hset(self.keys.job(job_id), "status", JobStatus.POSTING.value)

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

    async def ack(self, delivery: Delivery, *, worker_seconds: float | None = None,
                  status: JobStatus | None = None) -> None:
        job = delivery.job
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.stream, WORKER_GROUP, delivery.entry_id)
            pipe.xdel(self.keys.stream, delivery.entry_id)
            pipe.srem(self.keys.user_jobs(job.guild_id, job.user_id), job.id)
            if status is not None:
                pipe.hset(self.keys.job(job.id), "status", status.value)
            pipe.expire(self.keys.job(job.id), self.result_ttl_s)
            if worker_seconds is not None:
                pipe.lpush(self.keys.durations, f"{worker_seconds:.3f}")
                pipe.ltrim(self.keys.durations, 0, 49)
            await pipe.execute()

    async def release(self, consumer: str, delivery: Delivery) -> None:
        """Give a job back for another attempt now: it stays pending, and marking it idle
        for ages makes the next `reclaim` (by any worker) take it without waiting the lease."""
        await self.redis.hset(self.keys.job(delivery.job.id), "status", JobStatus.QUEUED.value)
        await self.redis.xclaim(
            self.keys.stream, WORKER_GROUP, consumer, 0, [delivery.entry_id],
            idle=_IDLE_FOREVER_MS, justid=True,
        )  # fmt: skip

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        job = delivery.job
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, {"job_id": job.id, "reason": reason[:2000]})
            pipe.hset(self.keys.job(job.id),
                      mapping={"status": JobStatus.FAILED.value, "error": reason[:2000]})
            pipe.xack(self.keys.stream, WORKER_GROUP, delivery.entry_id)
            pipe.xdel(self.keys.stream, delivery.entry_id)
            pipe.srem(self.keys.user_jobs(job.guild_id, job.user_id), job.id)
            pipe.expire(self.keys.job(job.id), self.result_ttl_s)
            await pipe.execute()

    async def _delivery(self, entry_id: str, job_json: bytes | str, attempts: int | bytes,
                        message_id: bytes | str, *, already_posted: bool) -> Delivery | None:
        try:
            job = Job.from_json(job_json)
        except ValidationError as exc:
            # A job this worker cannot read (a newer bot's schema): keep it for the admin.
            await self._drop_entry(entry_id)
            await self.redis.xadd(self.keys.dead, {"entry": entry_id,
                                                   "reason": f"unreadable job: {exc}"[:2000]})
            return None
        message = _text(message_id)
        return Delivery(entry_id=entry_id, job=job, attempts=int(attempts),
                        message_id=int(message) if message else None,
                        already_posted=already_posted)

    async def _drop_entry(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.stream, WORKER_GROUP, entry_id)
            pipe.xdel(self.keys.stream, entry_id)
            await pipe.execute()


def _round_robin(ring: list[int], queues: dict[int, list[str]],
                 paused: set[int]) -> list[tuple[int, str]]:
    """The order the take script will serve the queued jobs in, if nothing else arrives."""
    active = [g for g in ring if g not in paused and queues.get(g)]
    cursors = dict.fromkeys(active, 0)
    order = []
    while active:
        still = []
        for g in active:
            order.append((g, queues[g][cursors[g]]))
            cursors[g] += 1
            if cursors[g] < len(queues[g]):
                still.append(g)
        active = still
    return order


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
