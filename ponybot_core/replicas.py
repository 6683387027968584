"""Acknowledged means replicated: with Redis Sentinel, a job the bot tells its user is queued
is on a replica too, so the failover that promotes that replica cannot lose it.

Redis replicates asynchronously: the primary answers a write before any replica has it, and a
primary killed right then takes it along. `WAIT n timeout` (sent on the connection that made
the write, right after it) returns how many replicas have it. The bot runs the enqueue script
and WAIT in one round trip (`ponybot_core.queue.producer`) and answers by the outcome:

- CONFIRMED: a replica has the job; answered "queued".
- NO_REPLICA: no replica is attached to the primary, and the sentinels know none they could
  promote (the old primary after a failover is down until it returns as a replica; one cut off
  from the primary for over 10 × down-after-milliseconds is never promoted): a failover has
  nothing to lose the job to, and it is as safe as on one Redis with AOF; answered "queued".
  WAIT is not sent then, so a lone primary costs nothing per job.
- LAGGING: a replica that could be promoted did not confirm in time (it lags, or is cut off
  from the primary but alive): the job is taken back and the user told the queue is
  unavailable; "queued" could be a promise a failover breaks.

Which of these holds is read (`INFO replication`, and the sentinels when no replica is
attached) at most every `RECHECK_S`, and again whenever WAIT falls short.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from ponybot_core.config import SentinelConfig

# How long the count of attached replicas is believed.
RECHECK_S = 5.0


class Replication(StrEnum):
    NOT_ASKED = "not_asked"  # no [redis.sentinel], or ack_replicas = 0
    CONFIRMED = "confirmed"
    NO_REPLICA = "no_replica"
    LAGGING = "lagging"


@dataclass
class ReplicaWait:
    """WAIT for `replicas` replicas, at most `timeout_ms`, when a replica could be promoted."""

    replicas: int
    timeout_ms: int
    _wait: bool | None = field(default=None, init=False)
    _checked_at: float = field(default=0.0, init=False)

    @classmethod
    def from_config(cls, sentinel: SentinelConfig | None) -> ReplicaWait | None:
        if sentinel is None or sentinel.ack_replicas == 0:
            return None
        return cls(sentinel.ack_replicas, sentinel.ack_timeout_ms)

    async def wanted(self, redis: Redis) -> bool:
        """Whether to send WAIT with the next write: a replica could be promoted."""
        if self._wait is None or time.monotonic() - self._checked_at > RECHECK_S:
            await self._refresh(redis)
        return bool(self._wait)

    def forget(self) -> None:
        """The primary may have changed (a write failed): read the replicas' state again
        before the next write, rather than pay a WAIT timeout on a lone new primary."""
        self._wait = None

    async def outcome(self, redis: Redis, acknowledged: int) -> Replication:
        """What a WAIT's reply means; a short one reads the replicas' state again."""
        if acknowledged >= self.replicas:
            return Replication.CONFIRMED
        await self._refresh(redis)
        return Replication.LAGGING if self._wait else Replication.NO_REPLICA

    async def _refresh(self, redis: Redis) -> None:
        info = await redis.info("replication")
        self._wait = int(info.get("connected_slaves", 0)) > 0 or await _detached_promotable(redis)
        self._checked_at = time.monotonic()


async def _detached_promotable(redis: Redis) -> bool:
    """Whether a sentinel knows a replica that is up and could be promoted though it is not
    attached to the primary (Sentinel's own rule: its link to the primary has been down for
    less than 10 × down-after-milliseconds). No sentinel answering: no failover either."""
    pool = redis.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return False
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            master = await sentinel.sentinel_master(pool.service_name)
            replicas = await sentinel.sentinel_slaves(pool.service_name)
        except (ConnectionError, TimeoutError, ResponseError):
            continue
        limit_ms = 10 * int(master["down-after-milliseconds"])
        return any(not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
                   and int(r.get("slave-priority", 1)) != 0
                   and int(r.get("master-link-down-time", 0)) < limit_ms
                   for r in replicas)
    return False
