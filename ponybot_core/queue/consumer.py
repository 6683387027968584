"""The workers' side of the queue: take jobs by the queue policy, take over jobs whose worker
died, keep the leases of every job held, see cancel requests.

Each job taken is a `Delivery`: the job handed to one worker, and every move the worker makes
with it until it is finished. It holds the worker's lease on the job: each move is a
compare-and-set in Redis that succeeds only while this worker still holds the job (another
worker may have taken it over after this one stopped renewing) and only along
`ponybot_core.queue.state.LEGAL`. A move that finds the job held by someone else answers
`LOST`, and the worker drops the job without posting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from ponybot_core.config import CANCELLED_TTL_S, DEAD_TTL_S
from ponybot_core.job import Job
from ponybot_core.keys import WORKER_GROUP, Keys
from ponybot_core.queue.reads import QueueReads
from ponybot_core.queue.scripts import Scripts
from ponybot_core.queue.state import FINAL, JobStatus, Lifetimes, kept_on_takeover, sources
from ponybot_core.redis_client import as_str

# How many servers the take script looks at to find a job for a loaded model.
RING_LOOKAHEAD = 64

# How long to wait for the bot to record the queued message before posting a new one instead.
MESSAGE_WAIT_S = 5.0
# Dead letters kept for the admin (approximately: trimmed with MAXLEN ~).
DEAD_LETTERS_KEPT = 10_000


class Outcome(StrEnum):
    OK = "ok"
    SAME = "same"  # already there: a retried call whose first reply was lost
    LOST = "lost"  # another worker holds the job now
    ILLEGAL = "illegal"  # the job is somewhere this move cannot start from
    GONE = "gone"  # Redis has no such job any more (flushed, or expired)

    @property
    def done(self) -> bool:
        return self in (Outcome.OK, Outcome.SAME)


@dataclass(eq=False)
class Delivery:
    consumer: Consumer
    job_id: str
    job: Job
    entry_id: str
    attempts: int
    lease: str
    # RUNNING for a job to draw; POSTING for one taken over from a worker that may have
    # posted it already (confirm with Discord before drawing it again).
    status: JobStatus
    message_id: int | None = None
    # Set when the lease was found held by another worker: stop, post nothing.
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _message_resolved: bool = False

    async def message(self) -> int | None:
        """The queued message's id, resolved once. The bot records it right after answering,
        which can be a moment after a fast worker took the job; None when it never comes
        (the result is then posted in the channel)."""
        if self._message_resolved or self.message_id is not None:
            return self.message_id
        deadline = self.job.created_at + MESSAGE_WAIT_S
        while True:
            state = await self.consumer.reads.state(self.job_id)
            if state is not None and state.message_id is not None:
                self.message_id = state.message_id
                break
            if state is None or time.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        self._message_resolved = True
        return self.message_id

    async def posting(self, fields: Mapping[str, str] = {}) -> Outcome:
        """About to post: from here a crash may or may not have reached Discord. `fields` are
        recorded on the job in the same step (the picture check's verdict)."""
        outcome = await self._move(JobStatus.POSTING, fields=fields)
        if outcome.done:
            self.status = JobStatus.POSTING
        return outcome

    async def posted(self, result_message_id: int | None, *,
                     timings: Mapping[str, float] = {}, worker_seconds: float | None = None
                     ) -> Outcome:
        """The result is on Discord: record it and acknowledge, in one step."""
        fields: dict[str, str] = {"posted_at": f"{time.time():.6f}"}
        fields.update({f"{name}_s": f"{value:.6f}" for name, value in timings.items()})
        if result_message_id is not None:
            fields["result_message_id"] = str(result_message_id)
        # ETAs multiply these by the work queued: keep them per plain job's worth of it.
        per_unit = None if worker_seconds is None else worker_seconds / self.job.work_units()
        return await self._move(JobStatus.POSTED, effect="end", fields=fields,
                                worker_seconds=per_unit)

    async def retry(self) -> Outcome:
        """Give the job back: to the front of its server's list, for any worker to take."""
        return await self._move(JobStatus.QUEUED, effect="requeue")

    async def give_up(self, reason: str) -> Outcome:
        """Dead-letter the job with the reason (for the admin; the user is told by the worker)."""
        return self._noted(await self.consumer.dead_letter(self.job_id, self.lease, reason))

    async def cancelled(self) -> Outcome:
        return await self._move(JobStatus.CANCELLED, effect="end")

    async def _move(self, target: JobStatus, *, effect: str = "",
                    fields: Mapping[str, str] = {}, worker_seconds: float | None = None
                    ) -> Outcome:
        return self._noted(await self.consumer.move(
            self.job_id, self.lease, target, effect=effect, fields=fields,
            worker_seconds=worker_seconds))

    def _noted(self, outcome: Outcome) -> Outcome:
        if outcome is Outcome.LOST:
            self.lost.set()
        return outcome


class Consumer:
    def __init__(self, redis: Redis, keys: Keys, name: str, *, lease_s: float,
                 result_ttl_s: int, cancelled_ttl_s: int = CANCELLED_TTL_S,
                 dead_ttl_s: int = DEAD_TTL_S) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.group = WORKER_GROUP
        self.lease_s = lease_s
        self.lifetimes = Lifetimes(result_ttl_s, cancelled_ttl_s, dead_ttl_s)
        self.scripts = Scripts(redis)
        self.reads = QueueReads(redis, keys)

    async def take(self, *, count: int, block_s: float = 0.0,
                   preferred_models: Sequence[str] = (),
                   max_preference_wait_s: float = 30.0) -> list[Delivery]:
        """The next jobs by the queue policy (round-robin across servers, FIFO within, paused
        servers skipped, a loaded model preferred within a bound), up to `count` compatible
        ones; waits up to `block_s` for a wake-up when there are none."""
        keys, args = self._take_call(count, preferred_models, max_preference_wait_s)
        deliveries = await self._deliveries(await self.scripts.take(keys=keys, args=args))
        if deliveries or block_s <= 0:
            return deliveries
        # Wait for a wake-up and take in one round trip: Redis runs the take right after the
        # wait ends on the same connection. (The script is loaded: it just ran.)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.blpop([self.keys.wake], timeout=block_s)
            pipe.evalsha(self.scripts.take.sha, len(keys), *keys, *args)
            try:
                _, rows = await pipe.execute()
            except NoScriptError:  # Redis restarted while we waited
                rows = await self.scripts.take(keys=keys, args=args)
        return await self._deliveries(rows)

    def _take_call(self, count: int, preferred: Sequence[str],
                   max_wait: float) -> tuple[list[str], list[str | int | float]]:
        return ([self.keys.ring, self.keys.paused, self.keys.stream],
                [self.group, self.name, count, max_wait, RING_LOOKAHEAD,
                 JobStatus.QUEUED.value, JobStatus.RUNNING.value, *preferred])

    async def reclaim(self, *, count: int) -> list[Delivery]:
        """Jobs whose worker stopped renewing their lease (it died or hung). A paused server's
        running job goes back to its list instead; finished or vanished entries are cleared."""
        rows = await self.scripts.reclaim(
            keys=[self.keys.stream, self.keys.paused, self.keys.ring],
            args=[self.group, self.name, int(self.lease_s * 1000), count, kept_on_takeover(),
                  JobStatus.QUEUED.value],
        )  # fmt: skip
        return await self._deliveries(rows)

    async def renew(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Renew the leases of jobs this worker holds; returns those another worker holds now,
        each marked `lost`. A job whose state is gone (Redis came back empty) is still this
        worker's to finish: nobody else has it."""
        if not deliveries:
            return []
        replies = await self.scripts.renew(
            keys=[self.keys.stream, *(self.keys.job(d.job.id) for d in deliveries)],
            args=[self.group, self.name, *(d.lease for d in deliveries)],
        )
        lost = []
        for delivery, reply in zip(deliveries, replies, strict=True):
            if as_str(reply) == Outcome.LOST:
                delivery.lost.set()
                lost.append(delivery)
        return lost

    async def move(self, job_id: str, lease: str, target: JobStatus, *, effect: str = "",
                   fields: Mapping[str, str] = {}, dead_reason: str = "",
                   worker_seconds: float | None = None) -> Outcome:
        """Move a job this worker holds under `lease` (a compare-and-set along LEGAL); a
        `Delivery`'s moves all come here, as does dead-lettering a job that cannot be read."""
        k = self.keys
        flat = [item for pair in fields.items() for item in pair]
        reply = await self.scripts.transition(
            keys=[k.job(job_id), k.stream, k.ring, k.paused, k.dead, k.durations,
                  k.token(job_id)],
            args=[self.group, lease, target.value, sources(target), effect,
                  self.lifetimes.of(target) if target in FINAL else "",
                  dead_reason, DEAD_LETTERS_KEPT,
                  "" if worker_seconds is None else f"{worker_seconds:.3f}", *flat],
        )  # fmt: skip
        return Outcome(as_str(reply[0]))

    async def dead_letter(self, job_id: str, lease: str, reason: str) -> Outcome:
        """Give up a job this worker holds: the reason is kept on it and in the dead-letter
        stream, for the admin."""
        return await self.move(job_id, lease, JobStatus.DEAD, effect="end",
                               fields={"error": reason[:2000]}, dead_reason=reason[:2000])

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        return await self.reads.cancel_requested(job_ids)

    async def forget_departed(self, live: set[str], *, idle_s: float) -> list[str]:
        """Delete consumers of workers that are gone (no heartbeat, nothing pending, idle for
        `idle_s`): every worker process is a new consumer, and the group would keep them all."""
        try:
            consumers = await self.redis.xinfo_consumers(self.keys.stream, self.group)
        except ResponseError:  # no stream or group yet
            return []
        removed = []
        for consumer in consumers:
            name = as_str(consumer["name"])
            if name in live or name == self.name or int(consumer["pending"]) > 0:
                continue
            if int(consumer["idle"]) >= idle_s * 1000:
                await self.redis.xgroup_delconsumer(self.keys.stream, self.group, name)
                removed.append(name)
        return removed

    async def _deliveries(self, rows: list[list[bytes]]) -> list[Delivery]:
        deliveries = []
        for job_id, entry_id, job_json, attempts, message_id, lease, token, status in rows:
            try:
                job = Job.from_json(job_json)
            except ValidationError as exc:
                # A job this worker cannot read (a newer bot's schema) makes no delivery:
                # there is no job to draw. It is dead-lettered under the lease just taken,
                # as any other give-up is, and kept for the admin.
                await self.dead_letter(as_str(job_id), as_str(lease), f"unreadable job: {exc}")
                continue
            deliveries.append(Delivery(
                consumer=self, job_id=as_str(job_id),
                job=job.model_copy(update={"interaction_token": as_str(token)}),
                entry_id=as_str(entry_id), attempts=int(attempts), lease=as_str(lease),
                status=JobStatus(as_str(status)),
                message_id=int(message_id) if as_str(message_id) else None))
        return deliveries
