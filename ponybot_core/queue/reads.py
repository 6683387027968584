"""Reading the queue: a job's state, positions, the admins' snapshot. Read-only; every job hash
is read here and handed out as a `JobState`, or as a `Shown` (a few fields) where every queued
job is read every few seconds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from ponybot_core.job import Job
from ponybot_core.keys import ALL_SERVERS, Keys
from ponybot_core.queue.state import SHOWN_FIELDS, JobState, Shown
from ponybot_core.redis_client import as_str


@dataclass
class Snapshot:
    """The queue as admins see it: running jobs, then queued jobs in the order they will run."""

    running: list[tuple[Job, str, float]] = field(default_factory=list)  # job, worker, started
    queued: list[tuple[Job, int]] = field(default_factory=list)  # job, position (0 = paused)
    paused_guilds: set[int] = field(default_factory=set)
    paused_globally: bool = False
    # Job id -> the work queued up to and including it, in plain jobs (`Job.work_units`),
    # every server's counted: its position when every job is plain. Paused jobs have none.
    work_ahead: dict[str, float] = field(default_factory=dict)


@dataclass
class Waiting:
    """Waiting jobs for the metrics (`QueueReads.waiting_by_model`)."""

    jobs: int = 0
    by_model: dict[str, float] = field(default_factory=dict)  # model -> jobs (estimated)
    oldest: dict[str, float] = field(default_factory=dict)  # model -> oldest enqueued_at


# Jobs read per metrics scrape at most (`QueueReads.waiting_by_model`).
WAITING_SAMPLE = 2000


def round_robin(ring: Sequence[str], queues: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(waiting list, job key) in the order the take script will serve them, if nothing else
    arrives: one job per server per turn, servers in ring order."""
    active = [w for w in ring if queues.get(w)]
    cursors = dict.fromkeys(active, 0)
    order = []
    while active:
        still = []
        for w in active:
            order.append((w, queues[w][cursors[w]]))
            cursors[w] += 1
            if cursors[w] < len(queues[w]):
                still.append(w)
        active = still
    return order


# Jobs per round trip of `QueueReads.shown`: each chunk is parsed in one go on the event loop.
SHOWN_CHUNK = 100


class QueueReads:
    """Every read of the queue's state in Redis (the writes are `Producer`'s and the
    `Delivery`'s moves)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def state(self, job_id: str) -> JobState | None:
        return (await self.states([job_id]))[job_id]

    async def states(self, job_ids: Iterable[str]) -> dict[str, JobState | None]:
        ids = list(job_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
                pipe.get(self.keys.token(job_id))
            raw = await pipe.execute()
        return {job_id: JobState.from_hash(raw[2 * i], raw[2 * i + 1])
                for i, job_id in enumerate(ids)}

    async def shown(self, job_ids: Iterable[str], *,
                    chunk: int = SHOWN_CHUNK) -> dict[str, Shown | None]:
        """What each job's queued message shows (`Shown`), without reading its whole hash: one
        pipelined round trip per `chunk` jobs, letting the event loop in between, so a long
        queue never holds up the bot's commands for more than one chunk's parsing."""
        ids = list(job_ids)
        found: dict[str, Shown | None] = {}
        for start in range(0, len(ids), chunk):
            if start:
                await asyncio.sleep(0)
            part = ids[start:start + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in part:
                    key = self.keys.job(job_id)
                    pipe.hmget(key, SHOWN_FIELDS)
                    pipe.hexists(key, "job")
                    pipe.exists(self.keys.token(job_id))
                raw = await pipe.execute()
            found.update((job_id, Shown.from_fields(raw[3 * i], bool(raw[3 * i + 1]),
                                                    token_kept=bool(raw[3 * i + 2])))
                         for i, job_id in enumerate(part))
        return found

    async def job(self, job_id: str) -> Job | None:
        """The job's parameters (with its interaction token while that is alive)."""
        state = await self.state(job_id)
        return state.job() if state is not None else None

    async def user_jobs(self, guild_id: int | None, user_id: int) -> list[str]:
        return sorted(as_str(i) for i in await self.redis.smembers(
            self.keys.user_jobs(guild_id, user_id)))

    async def paused(self) -> tuple[bool, set[int]]:
        """(everything paused, paused server ids)."""
        members = {as_str(m) for m in await self.redis.smembers(self.keys.paused)}
        return ALL_SERVERS in members, {int(m) for m in members if m != ALL_SERVERS}

    async def _waiting(self, lists: Sequence[str]) -> dict[str, list[str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in lists:
                pipe.lrange(w, 0, -1)
            raw = await pipe.execute()
        return {w: [as_str(k) for k in keys] for w, keys in zip(lists, raw, strict=True)}

    async def positions(self, servers: Callable[[int], bool] | None = None) -> dict[str, int]:
        """Every queued job's position, counting only servers that are not paused; empty while
        everything is paused (no position moves then). `servers` (a server id, 0 for DMs ->
        wanted) keeps only those servers' jobs, their positions still counted among all."""
        paused_all, _ = await self.paused()
        if paused_all:
            return {}
        ring = [as_str(w) for w in await self.redis.lrange(self.keys.ring, 0, -1)]
        order = round_robin(ring, await self._waiting(ring))
        return {self.keys.job_id(key): n for n, (waiting, key) in enumerate(order, 1)
                if servers is None or servers(self.keys.waiting_server(waiting))}

    async def snapshot(self, guild_id: int | None = None, *, all_guilds: bool = False) -> Snapshot:
        """Running and queued jobs with positions; one server's, or every server's."""
        paused_all, paused_guilds = await self.paused()
        snap = Snapshot(paused_guilds=paused_guilds, paused_globally=paused_all)
        wanted = None if all_guilds else (guild_id or 0)
        ring = [as_str(w) for w in await self.redis.lrange(self.keys.ring, 0, -1)]
        held = [self.keys.waiting(g) for g in sorted(paused_guilds)]
        queues = await self._waiting([*ring, *held])
        ordered = [(key, 0 if paused_all else n)
                   for n, (_, key) in enumerate(round_robin(ring, queues), 1)]
        ordered += [(key, 0) for w in held for key in queues[w]]
        states = await self.states(self.keys.job_id(key) for key, _ in ordered)
        work = 0.0
        for key, position in ordered:
            state = states[self.keys.job_id(key)]
            if state is not None and position:
                work += state.job().work_units()
                snap.work_ahead[state.id] = work
            if state is not None and (wanted is None or state.guild == wanted):
                snap.queued.append((state.job(), position))
        entries = await self.redis.xrange(self.keys.stream) or []
        running = await self.states(self.keys.job_id(fields[b"job"]) for _, fields in entries
                                    if fields and b"job" in fields)
        for state in running.values():
            if state is not None and not state.finished and \
                    (wanted is None or state.guild == wanted):
                snap.running.append((state.job(), state.worker or "?", state.started_at or 0.0))
        return snap

    async def waiting_by_model(self, *, sample: int = WAITING_SAMPLE) -> Waiting:
        """Waiting jobs per model, for the metrics: every waiting list's exact length (the
        total is exact), and the model and age of at most `sample` jobs (each list's oldest
        first), so a scrape reads a bounded number of jobs however long the queue is and
        however many servers have one. A list longer than its share of the sample counts its
        models in proportion to what was read of it; with more lists than `sample`, `sample`
        lists chosen at random are read, one job each, and the split scaled to the total (the
        oldest wait is then the oldest of those read)."""
        ring = [as_str(w) for w in await self.redis.lrange(self.keys.ring, 0, -1)]
        _, paused_guilds = await self.paused()
        lists = list(dict.fromkeys([*ring, *(self.keys.waiting(g) for g in paused_guilds)]))
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in lists:
                pipe.llen(w)
            lengths = [int(n) for n in await pipe.execute()]
        chosen = (range(len(lists)) if len(lists) <= sample
                  else sorted(random.sample(range(len(lists)), max(1, sample))))
        share = max(1, sample // max(1, len(chosen)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in chosen:
                pipe.lrange(lists[i], 0, share - 1)
            heads = await pipe.execute()
        # In chunks with the event loop let in between, as `shown` reads: parsing the whole
        # sample at once held the loop up to 150 ms (bench/metrics_scrape.py).
        sampled = [as_str(key) for keys in heads for key in keys]
        replies = []
        for start in range(0, len(sampled), SHOWN_CHUNK):
            if start:
                await asyncio.sleep(0)
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in sampled[start:start + SHOWN_CHUNK]:
                    pipe.hmget(key, ["model", "enqueued_at"])
                replies += await pipe.execute()
        fields = iter(replies)
        waiting = Waiting(jobs=sum(lengths))
        counted = sum(lengths[i] for i in chosen)
        scale = waiting.jobs / counted if counted else 0.0  # 1 when every list was read
        for i, keys in zip(chosen, heads, strict=True):
            read = [next(fields) for _ in keys]
            for model, enqueued_at in read:
                name = as_str(model, errors="replace") if model else "?"
                waiting.by_model[name] = (waiting.by_model.get(name, 0.0)
                                          + scale * lengths[i] / len(read))
                if enqueued_at:
                    at = float(enqueued_at)
                    waiting.oldest[name] = min(waiting.oldest.get(name, at), at)
        return waiting

    async def recent_job_seconds(self) -> float | None:
        """Mean worker time of recent jobs per plain job's worth of work (a hires job counts
        as `Job.work_units` of them), for ETAs."""
        values = [float(v) for v in await self.redis.lrange(self.keys.durations, 0, 49)]
        return sum(values) / len(values) if values else None

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs someone asked to cancel."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "cancel")
            flags = await pipe.execute()
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}
