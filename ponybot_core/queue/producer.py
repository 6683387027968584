"""The bot's side of the queue: enqueue (with positions and the per-user cap), record the
message that shows a job, edit a job that waits, cancel, clear, pause and resume, and forget
a server the bot left."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT

from ponybot_core.config import CANCELLED_TTL_S, DEAD_TTL_S
from ponybot_core.job import INTERACTION_TOKEN_TTL_S, Job
from ponybot_core.keys import ALL_SERVERS, Keys
from ponybot_core.queue.scripts import Scripts
from ponybot_core.queue.state import EDITABLE, JobStatus, Lifetimes, sources
from ponybot_core.redis_client import as_str
from ponybot_core.replicas import Replication, ReplicaWait

# The token key outlives Discord's 15 minutes a little, for clocks that disagree.
TOKEN_KEEP_S = INTERACTION_TOKEN_TTL_S + 60


class UserLimitReached(Exception):
    def __init__(self, job_ids: list[str], limit: int) -> None:
        super().__init__(f"user has {len(job_ids)} jobs (limit {limit})")
        self.job_ids = job_ids
        self.limit = limit


@dataclass(frozen=True)
class Enqueued:
    position: int  # 1 = next to start (among servers that are not paused); 0 = held by a pause
    paused: bool  # the server (or everything) is paused: the job waits for a resume
    # Whether a replica has it (ponybot_core/replicas.py): LAGGING = do not tell the user.
    replication: Replication = Replication.NOT_ASKED


@dataclass(frozen=True)
class Cancelled:
    job: Job | None
    # What the job was doing: queued (now removed), running (asked to stop at the next step),
    # or already finished / unknown.
    was: str
    message_id: int | None = None


@dataclass(frozen=True)
class Edited:
    done: bool  # the job now has the new parameters, in the same place in the queue
    # The status it was found in: `queued` when done; else a worker took it first (running,
    # posting, ...) or it ended; "" when it is gone.
    was: str


class Producer:
    def __init__(self, redis: Redis, keys: Keys, *, result_ttl_s: int,
                 cancelled_ttl_s: int = CANCELLED_TTL_S, dead_ttl_s: int = DEAD_TTL_S,
                 replica_wait: ReplicaWait | None = None) -> None:
        self.redis = redis
        self.keys = keys
        # With Sentinel: an enqueue waits for a replica to have the job (WAIT).
        self.replica_wait = replica_wait
        self.lifetimes = Lifetimes(result_ttl_s, cancelled_ttl_s, dead_ttl_s)
        self.scripts = Scripts(redis)

    async def enqueue(self, job: Job, *, user_limit: int | None = None) -> Enqueued:
        """Queue the job behind its server's others; raises UserLimitReached over the cap.
        Safe to call again for the same job (a retry after a lost reply queues it once)."""
        k = self.keys
        keys = [k.job(job.id), k.waiting(job.guild_key), k.ring,
                k.user_jobs(job.guild_id, job.user_id), k.wake, k.paused, k.token(job.id)]
        args: list[EncodableT] = [job.id, job.to_json(), job.guild_key, job.user_id, job.model_id,
                job.batch_key(), "" if user_limit is None else user_limit,
                job.interaction_token, TOKEN_KEEP_S]
        replication = Replication.NOT_ASKED
        if self.replica_wait is not None and await self.replica_wait.wanted(self.redis):
            try:
                reply, acknowledged = await self._enqueue_and_wait(keys, args,
                                                                   self.replica_wait)
            except RedisError:
                self.replica_wait.forget()
                raise
            replication = await self.replica_wait.outcome(self.redis, acknowledged)
        else:
            reply = await self.scripts.enqueue(keys=keys, args=args)
            if self.replica_wait is not None:
                replication = Replication.NO_REPLICA
        if int(reply[0]) == -1:
            raise UserLimitReached(sorted(as_str(i) for i in reply[1]), user_limit or 0)
        return Enqueued(position=int(reply[0]), paused=bool(int(reply[1])),
                        replication=replication)

    async def _enqueue_and_wait(self, keys: list[str], args: list[EncodableT],
                                wait: ReplicaWait) -> tuple[Any, int]:
        """The enqueue script and WAIT in one round trip, on one connection: WAIT counts the
        replicas that have this connection's writes, so it cannot be a separate call."""
        for _ in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self.scripts.enqueue.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
                try:
                    reply, acknowledged = await pipe.execute()
                except NoScriptError:
                    # A new primary (a failover, a restart) has not seen the script yet.
                    await self.redis.script_load(self.scripts.enqueue.script)
                    continue
                return reply, int(acknowledged)
        raise NoScriptError("the enqueue script could not be loaded")

    async def record_message(self, job_id: str, message_id: int, *, position: int) -> None:
        """The Discord message that shows the job (for the worker to edit), and the position
        it shows."""
        await self.scripts.set_fields(keys=[self.keys.job(job_id)], args=[
            "message_id", message_id, "shown_position", position, "shown_at", f"{time.time():.3f}",
        ])  # fmt: skip

    async def record_shown_position(self, job_id: str, position: int) -> None:
        await self.scripts.set_fields(keys=[self.keys.job(job_id)], args=[
            "shown_position", position, "shown_at", f"{time.time():.3f}"])  # fmt: skip

    async def edit_queued(self, job: Job) -> Edited:
        """Give a waiting job new parameters (`job`, with the same id, server and user): it
        keeps its place. Loses, changing nothing, once a worker has taken it."""
        reply = await self.scripts.edit(keys=[self.keys.job(job.id)], args=[
            EDITABLE.value, job.id, job.to_json(), job.model_id, job.batch_key(),
            job.guild_key, job.user_id])  # fmt: skip
        outcome, was = as_str(reply[0]), as_str(reply[1])
        if outcome == "moved":
            raise ValueError(f"job {job.id}: an edit cannot move a job to another server or user")
        return Edited(done=outcome == "ok", was=was)

    async def cancel(self, job_id: str) -> Cancelled:
        """Remove a queued job, or ask its worker to stop a running one at the next step."""
        was, job_json, message, *token = await self.scripts.cancel(
            keys=[self.keys.job(job_id), self.keys.ring, self.keys.token(job_id)],
            args=[self.lifetimes.cancelled_s, sources(JobStatus.CANCELLED)],
        )
        job = Job.from_json(job_json).model_copy(
            update={"interaction_token": as_str(token[0]) if token else ""}) if job_json else None
        message = as_str(message)
        return Cancelled(job=job, was=as_str(was), message_id=int(message) if message else None)

    async def clear(self, guild_id: int | None, user_id: int | None = None) -> list[Cancelled]:
        """Cancel a server's queued jobs (one user's, or everyone's)."""
        cancelled = []
        for key in await self.redis.lrange(self.keys.waiting(guild_id or 0), 0, -1):
            job_id = self.keys.job_id(key)
            if user_id is not None:
                owner = await self.redis.hget(key, "user")
                if owner is None or int(owner) != user_id:
                    continue
            result = await self.cancel(job_id)
            if result.was == JobStatus.QUEUED:
                cancelled.append(result)
        return cancelled

    async def pause(self, guild_id: int | None) -> None:
        """Pause one server (its jobs stay queued, others keep flowing), or all with None."""
        member = ALL_SERVERS if guild_id is None else str(guild_id)
        await self.scripts.pause(keys=[self.keys.paused, self.keys.ring,
                                       self.keys.waiting(guild_id or 0)], args=[member])

    async def resume(self, guild_id: int | None) -> None:
        member = ALL_SERVERS if guild_id is None else str(guild_id)
        await self.scripts.resume(keys=[self.keys.paused, self.keys.ring, self.keys.wake,
                                        self.keys.waiting(guild_id or 0)], args=[member])

    async def forget_server(self, guild_id: int) -> list[Cancelled]:
        """The bot was removed from the server: its pause goes, and so do its waiting jobs if
        it was paused (no one there can resume it now, so they could never run). A server
        that was not paused keeps its waiting jobs: they run like any other."""
        if not await self.redis.sismember(self.keys.paused, str(guild_id)):
            return []
        cancelled = await self.clear(guild_id)
        # A job given back meanwhile is not stuck behind a pause nobody can lift: it runs.
        await self.resume(guild_id)
        return cancelled
