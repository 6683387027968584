"""The workers' side of the queue: take jobs by the queue policy, take over jobs whose worker
died, keep the leases of every job held, see cancel requests."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from ponybot_core.config import CANCELLED_TTL_S, DEAD_TTL_S
from ponybot_core.job import Job
from ponybot_core.keys import WORKER_GROUP, Keys
from ponybot_core.queue.delivery import Delivery, Outcome
from ponybot_core.queue.scripts import Scripts
from ponybot_core.queue.state import JobStatus, Lifetimes, kept_on_takeover
from ponybot_core.queue.views import QueueView, text

# How many servers the take script looks at to find a job for a loaded model.
RING_LOOKAHEAD = 64


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
        self.view = QueueView(redis, keys)

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
                   max_wait: float) -> tuple[list[str], list[object]]:
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
            if text(reply) == Outcome.LOST:
                delivery.lost.set()
                lost.append(delivery)
        return lost

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        return await self.view.cancel_requested(job_ids)

    async def forget_departed(self, live: set[str], *, idle_s: float) -> list[str]:
        """Delete consumers of workers that are gone (no heartbeat, nothing pending, idle for
        `idle_s`): every worker process is a new consumer, and the group would keep them all."""
        try:
            consumers = await self.redis.xinfo_consumers(self.keys.stream, self.group)
        except ResponseError:  # no stream or group yet
            return []
        removed = []
        for consumer in consumers:
            name = text(consumer["name"])
            if name in live or name == self.name or int(consumer["pending"]) > 0:
                continue
            if int(consumer["idle"]) >= idle_s * 1000:
                await self.redis.xgroup_delconsumer(self.keys.stream, self.group, name)
                removed.append(name)
        return removed

    async def _deliveries(self, rows: list[list[bytes]]) -> list[Delivery]:
        deliveries = []
        for job_id, entry_id, job_json, attempts, message_id, lease, token, status in rows:
            delivery = Delivery(consumer=self, job_id=text(job_id), job=_unread,
                                entry_id=text(entry_id),
                                attempts=int(attempts), lease=text(lease),
                                status=JobStatus(text(status)),
                                message_id=int(message_id) if text(message_id) else None)
            try:
                job = Job.from_json(job_json)
            except ValidationError as exc:
                # A job this worker cannot read (a newer bot's schema): keep it for the admin.
                await delivery.give_up(f"unreadable job: {exc}")
                continue
            delivery.job = job.model_copy(update={"interaction_token": text(token)})
            deliveries.append(delivery)
        return deliveries


# Stands in for the job until it is parsed (a delivery is built first so that an unreadable
# job can be dead-lettered through the same move as any other).
_unread = Job.model_construct()
