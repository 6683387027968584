"""The queue's promises under any interleaving, checked by a hypothesis state machine on a real
redis-server: jobs enqueued, taken, renewed, posted, given back, given up and cancelled by three
workers that crash (forget everything they hold), stall (their leases run out and others take
over), see Redis errors before or after a call reached Redis, while servers are paused and
resumed and Redis restarts (with its AOF, as deployed).

After every step: each job is in exactly one place that matches its status, the ring holds
exactly the servers a worker can serve, and no job was posted twice. At the end, with the
pauses lifted and one well-behaved worker: every job ends posted, cancelled or dead.

Posting is modelled as the worker does it: the `posting` compare-and-set and the post itself
in one step. The moment between them is Discord's to make idempotent (the same message edited
again, a channel post's nonce): tests/test_exactly_once.py covers that side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from ponybot_cli.redis_server import RedisServer
from ponybot_core.keys import Keys
from ponybot_core.queue import Consumer, Delivery, JobStatus, Producer, QueueReads
from ponybot_core.queue.state import FINAL
from ponybot_core.redis_client import worker_redis
from ponybot_testkit.redis_faults import Faults, restart
from ponybot_testkit.world import make_job

T = TypeVar("T")
GUILDS = (1, 2, 3)
WORKERS = ("w0", "w1")
KEYS = Keys("sm")


@dataclass
class SimWorker:
    consumer: Consumer
    held: dict[str, Delivery] = field(default_factory=dict)
    # Posted on "Discord", not yet recorded.
    posted_here: set[str] = field(default_factory=set)


class QueueMachine(RuleBasedStateMachine):
    server: RedisServer

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.faults = Faults()
        self.redis = worker_redis(self.server.url, block_s=0)
        self.faults.wrap(self.redis)
        self.run(self.redis.flushall())
        self.producer = Producer(self.redis, KEYS, result_ttl_s=600)
        self.reads = QueueReads(self.redis, KEYS)
        self.workers = {name: SimWorker(Consumer(self.redis, KEYS, name, lease_s=60,
                                                 result_ttl_s=600)) for name in WORKERS}
        self.jobs: dict[str, int] = {}  # job id -> guild
        self.posts: dict[str, int] = {}  # job id -> times its result was posted on "Discord"
        self.paused: set[str] = set()
        self.seed = 0

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        """As the worker does (inference.loop.retrying): a connection error is retried."""
        for _ in range(10):
            try:
                return self.run(call())
            except ConnectionError:
                continue
        raise AssertionError("Redis kept failing")

    # --- the bot ------------------------------------------------------------------------------

    @rule(guild=st.sampled_from(GUILDS))
    def enqueue(self, guild: int) -> None:
        self.seed += 1
        # Ids in order of creation: the machine must replay exactly (hypothesis shrinks by
        # replaying), and sorted ids pick the same jobs every time.
        job = make_job(id=f"{self.seed:016x}", guild_id=guild, seed=self.seed, user_id=guild)
        self.patiently(lambda: self.producer.enqueue(job))
        self.jobs[job.id] = guild
        self.posts[job.id] = 0

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        self.patiently(lambda: self.producer.cancel(job_id))

    @rule(scope=st.sampled_from([*(str(g) for g in GUILDS), "*"]))
    def pause_or_resume(self, scope: str) -> None:
        target = None if scope == "*" else int(scope)
        if scope in self.paused:
            self.patiently(lambda: self.producer.resume(target))
            self.paused.discard(scope)
        else:
            self.patiently(lambda: self.producer.pause(target))
            self.paused.add(scope)

    # --- the workers --------------------------------------------------------------------------

    @rule(name=st.sampled_from(WORKERS), count=st.integers(1, 3))
    def take(self, name: str, count: int) -> None:
        worker = self.workers[name]
        for delivery in self.patiently(lambda: worker.consumer.take(count=count)):
            worker.held[delivery.job_id] = delivery

    @rule(name=st.sampled_from(WORKERS))
    def take_over(self, name: str) -> None:
        worker = self.workers[name]
        for delivery in self.patiently(lambda: worker.consumer.reclaim(count=5)):
            if delivery.status is JobStatus.POSTING and self.posts[delivery.job_id]:
                # Discord shows the result already: record it, never draw it again.
                self.patiently(lambda d=delivery: d.posted(1))  # type: ignore[misc]
                continue
            worker.held[delivery.job_id] = delivery

    @rule(name=st.sampled_from(WORKERS))
    def renew(self, name: str) -> None:
        worker = self.workers[name]
        for lost in self.patiently(lambda: worker.consumer.renew(list(worker.held.values()))):
            worker.held.pop(lost.job_id, None)
            worker.posted_here.discard(lost.job_id)

    def _ready(self) -> list[str]:
        return [n for n, w in self.workers.items() if set(w.held) - w.posted_here]

    @precondition(lambda self: self._ready())
    @rule(data=st.data())
    def post(self, data: st.DataObject) -> None:
        """A worker posts everything it has drawn: `posting`, then the post itself."""
        worker = self.workers[data.draw(st.sampled_from(self._ready()))]
        for job_id in sorted(set(worker.held) - worker.posted_here):
            delivery = worker.held[job_id]
            outcome = self.patiently(delivery.posting)
            if outcome.done:
                self.posts[job_id] += 1
                worker.posted_here.add(job_id)
            else:
                del worker.held[job_id]

    @precondition(lambda self: any(w.posted_here for w in self.workers.values()))
    @rule(data=st.data())
    def record_posts(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([n for n, w in self.workers.items() if w.posted_here]))
        worker = self.workers[name]
        for job_id in sorted(worker.posted_here):
            self.patiently(lambda j=job_id: worker.held[j].posted(1))  # type: ignore[misc]
            del worker.held[job_id]
        worker.posted_here.clear()

    def _running(self, name: str) -> list[str]:
        worker = self.workers[name]
        return sorted(j for j, d in worker.held.items()
                      if d.status is JobStatus.RUNNING and j not in worker.posted_here)

    @precondition(lambda self: any(self._running(n) for n in WORKERS))
    @rule(data=st.data(), move=st.sampled_from(["retry", "give_up", "cancelled"]))
    def end_without_posting(self, data: st.DataObject, move: str) -> None:
        name = data.draw(st.sampled_from([n for n in WORKERS if self._running(n)]))
        worker = self.workers[name]
        delivery = worker.held.pop(data.draw(st.sampled_from(self._running(name))))
        if move == "retry":
            self.patiently(delivery.retry)
        elif move == "give_up":
            self.patiently(lambda: delivery.give_up("failed alone"))
        elif self.job_id_cancel_requested(delivery.job_id):
            self.patiently(delivery.cancelled)
        else:
            worker.held[delivery.job_id] = delivery

    def job_id_cancel_requested(self, job_id: str) -> bool:
        return job_id in self.patiently(lambda: self.reads.cancel_requested([job_id]))

    @rule(name=st.sampled_from(WORKERS))
    def crash(self, name: str) -> None:
        """The process dies: everything it held in memory is gone."""
        self.workers[name].held.clear()
        self.workers[name].posted_here.clear()

    @rule()
    def leases_run_out(self) -> None:
        """Time passes with no renewal: every held job is up for a takeover (the workers may
        be alive but stalled, and keep acting on what they hold)."""
        self.run(expire_every_lease(self.redis))

    # --- the infrastructure ---------------------------------------------------------------------

    @rule(mode=st.sampled_from(["before", "after"]))
    def redis_error_on_the_next_call(self, mode: str) -> None:
        self.faults.armed = mode

    @rule()
    def redis_restarts(self) -> None:
        self.faults.armed = None
        restart(self.server)

    # --- what must always hold ------------------------------------------------------------------

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        self.faults.armed, armed = None, self.faults.armed
        try:
            self.run(check_places(self.redis, self.jobs, self.paused))
        finally:
            self.faults.armed = armed

    @invariant()
    def no_job_is_posted_twice(self) -> None:
        assert all(count <= 1 for count in self.posts.values()), self.posts

    def teardown(self) -> None:
        try:
            self.faults.armed = None
            self.run(self.finish_everything())
        finally:
            with contextlib.suppress(Exception):
                self.run(self.redis.aclose())
            self.loop.close()

    async def finish_everything(self) -> None:
        """Pauses lifted and one well-behaved worker: every job ends posted, cancelled or
        dead, and each posted job was posted once."""
        for target in self.paused:
            await self.producer.resume(None if target == "*" else int(target))
        await expire_every_lease(self.redis)
        worker = Consumer(self.redis, KEYS, "closer", lease_s=60, result_ttl_s=600)
        for _ in range(200):
            deliveries = await worker.reclaim(count=10) or await worker.take(count=10)
            if not deliveries:
                break
            for d in deliveries:
                if d.status is JobStatus.POSTING and self.posts[d.job_id]:
                    assert (await d.posted(1)).done
                    continue
                if (await d.posting()).done:
                    self.posts[d.job_id] += 1
                    assert (await d.posted(1)).done
        states = await self.reads.states(self.jobs)
        for job_id, state in states.items():
            assert state is not None and state.status in FINAL, (job_id, state)
            assert self.posts[job_id] == (1 if state.status is JobStatus.POSTED else 0), \
                (job_id, state.status, self.posts[job_id])


async def expire_every_lease(redis: Redis) -> None:
    """Make every pending entry look idle for ages, keeping its owner."""
    with contextlib.suppress(Exception):
        for entry in await redis.xpending_range(KEYS.stream, "workers", "-", "+", 1000):
            await redis.xclaim(KEYS.stream, "workers", entry["consumer"], 0,
                               [entry["message_id"]], idle=10**9, justid=True)


async def check_places(redis: Redis, jobs: dict[str, int], paused: set[str]) -> None:
    waiting = {g: [KEYS.job_id(k) for k in await redis.lrange(KEYS.waiting(g), 0, -1)]
               for g in GUILDS}
    ring = [r.decode() for r in await redis.lrange(KEYS.ring, 0, -1)]
    try:
        pending = await redis.xpending_range(KEYS.stream, "workers", "-", "+", 1000)
    except Exception:  # no stream or group yet
        pending = []
    entries = {}
    for entry in pending:
        [(_, fields)] = await redis.xrange(KEYS.stream, entry["message_id"], entry["message_id"])
        entries[KEYS.job_id(fields[b"job"])] = entry["message_id"].decode()
    # The ring is exactly the servers with waiting jobs that are not paused, each once.
    assert sorted(ring) == sorted(KEYS.waiting(g) for g in GUILDS
                                  if waiting[g] and str(g) not in paused), (ring, paused)
    for job_id, guild in jobs.items():
        raw = await redis.hgetall(KEYS.job(job_id))
        status = JobStatus(raw[b"status"].decode())
        places = sum(ids.count(job_id) for ids in waiting.values())
        mine = await redis.sismember(KEYS.user_jobs(guild, guild), job_id)
        if status is JobStatus.QUEUED:
            assert places == 1 and job_id in waiting[guild] and job_id not in entries, job_id
        elif status in (JobStatus.RUNNING, JobStatus.POSTING):
            assert places == 0 and entries.get(job_id) == raw[b"entry"].decode(), job_id
        else:
            assert places == 0 and job_id not in entries and not mine, (job_id, status)
        assert mine == (status not in FINAL), (job_id, status)


def test_the_queue_keeps_its_promises_under_any_interleaving(redis_server: RedisServer) -> None:
    QueueMachine.server = redis_server
    run_state_machine_as_test(QueueMachine, settings=settings(
        max_examples=60, stateful_step_count=50, deadline=None, derandomize=True,
        database=None, suppress_health_check=[HealthCheck.too_slow]))

