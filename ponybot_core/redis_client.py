"""Redis clients for the bot, the workers and `ponybot check`: timeouts, health checks, and
retries that survive a restarted Redis (a pooled connection that died with the old server is
replaced) and a Sentinel failover (redis-py's Sentinel client asks the sentinels where the
primary is whenever it connects, and drops connections to a primary that became a replica)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from ponybot_core.logs import masked_url
from ponybot_core.metrics import CountedRetry  # counts failed commands

if TYPE_CHECKING:
    from ponybot_core.config import LoadedConfig

# The bot's connections to Redis. A command holds one for a round trip; more commands at once
# wait for one (FIFO) rather than fail: redis-py's own pool refuses past its size (100 since
# redis-py 8), which told users of a burst that the queue was unavailable. Bounded, a cold
# burst opens (and greets: HELLO, CLIENT SETINFO) at most this many, and N bot processes
# hold at most N times this many.
BOT_CONNECTIONS = 32
# How long a command waits for a free connection before its user is told the queue is
# unavailable: Discord's 3 seconds leave the rest for the enqueue and the answer.
CONNECTION_WAIT_S = 1.5
# A sentinel that does not answer this fast is skipped for the next one: asking where the
# primary is must fit in a /pony's 3 seconds with the rest.
SENTINEL_TIMEOUT_S = 0.5


def as_str(value: bytes | str | int | float, *, errors: str = "strict") -> str:
    """A Redis reply as text: the clients made here answer bytes (no `decode_responses`), and
    scripts may answer numbers. `errors="replace"` for what people may have hand-edited."""
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class SentinelService:
    """A primary that sentinels watch over (`[redis.sentinel]`), with the passwords to reach
    it. Never logged whole: `str()` leaves the passwords out."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None

    def __str__(self) -> str:
        where = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"sentinel service {self.service_name!r} via {where}"


# Where Redis is: a URL (one server), or the sentinels that know the current primary.
RedisTarget = str | SentinelService


def redis_target(loaded: LoadedConfig) -> RedisTarget | None:
    """The configured Redis: `[redis.sentinel]`, else REDIS_URL, else redis.url; None when
    none is (`ponybot up` starts an embedded one). Raises ConfigError for both at once."""
    from ponybot_core.config import ConfigError

    sentinel = loaded.config.redis.sentinel
    if sentinel is None:
        return loaded.redis_url
    if loaded.redis_url:
        raise ConfigError("redis.sentinel is set, and so is "
                          f"{'REDIS_URL' if loaded.secrets.redis_url else 'redis.url'}: "
                          "set one (with Sentinel, the password comes from REDIS_PASSWORD)")
    secrets = loaded.secrets
    return SentinelService(
        sentinels=tuple(sentinel.hosts()), service_name=sentinel.service_name, db=sentinel.db,
        password=secrets.redis_password.get_secret_value() if secrets.redis_password else None,
        sentinel_password=(secrets.redis_sentinel_password.get_secret_value()
                           if secrets.redis_sentinel_password else None),
    )  # fmt: skip


def describe(target: RedisTarget) -> str:
    """`target` fit for a log line (no password)."""
    return masked_url(target) if isinstance(target, str) else str(target)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's discovery of the primary with the bot's bounded pool that waits for a free
    connection (redis-py's two pools, combined: discovery and failover handling come from the
    first, `get_connection`/`release` from the second)."""


class _SentinelRedis(Redis):
    """A client of the primary that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def sentinel_manager(service: SentinelService) -> Sentinel:
    return Sentinel(service.sentinels, sentinel_kwargs={
        "password": service.sentinel_password, "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S})  # fmt: skip


def _client(target: RedisTarget, *, bounded: bool, **options: Any) -> Redis:
    if isinstance(target, str):
        if bounded:
            return Redis.from_pool(BlockingConnectionPool.from_url(
                target, max_connections=BOT_CONNECTIONS, timeout=CONNECTION_WAIT_S,
                **options))  # fmt: skip
        return Redis.from_url(target, **options)
    if bounded:
        options.update(connection_pool_class=_BlockingSentinelPool,
                       max_connections=BOT_CONNECTIONS, timeout=CONNECTION_WAIT_S)
    client: Redis = sentinel_manager(target).master_for(
        target.service_name, redis_class=_SentinelRedis, db=target.db,
        password=target.password, **options)
    return client


def bot_redis(target: RedisTarget) -> Redis:
    """Short timeouts and two quick retries: a /pony is answered within Discord's 3 seconds
    whatever Redis is doing (queued, or told that the queue is unavailable — as it is while
    the sentinels elect a new primary)."""
    return _client(
        target, bounded=True,
        socket_timeout=0.8, socket_connect_timeout=0.5, health_check_interval=10,
        retry=CountedRetry(ExponentialBackoff(cap=0.2, base=0.05), retries=2),
        retry_on_error=[ConnectionError, TimeoutError],
    )  # fmt: skip


def worker_redis(target: RedisTarget, *, block_s: float) -> Redis:
    """Patient: a worker waits a restart or a failover out. The socket timeout leaves room for
    the blocking wait for new jobs (`block_s`)."""
    return _client(
        target, bounded=False,
        socket_timeout=block_s + 5.0, socket_connect_timeout=2.0, health_check_interval=10,
        retry=CountedRetry(ExponentialBackoff(cap=1.0, base=0.1), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )  # fmt: skip


def probe_redis(target: RedisTarget, *, timeout_s: float = 3.0) -> Redis:
    """One-off commands (`ponybot check`, `ponybot models`): no retries, a clear error soon."""
    return _client(target, bounded=False, socket_timeout=timeout_s,
                   socket_connect_timeout=timeout_s)


@dataclass(frozen=True)
class SentinelSurvey:
    """What the sentinels say (`ponybot check`): who answered, the primary, its replicas."""

    reached: list[str]
    unreachable: list[str]
    primary: str | None
    replicas: list[str]
    # The sentinels each answering sentinel knows besides itself (a quorum needs them).
    other_sentinels: int


async def survey(service: SentinelService) -> SentinelSurvey:
    """Ask every sentinel about the service, at once; errors are reported, not raised."""
    manager = sentinel_manager(service)
    reached: list[str] = []
    unreachable: list[str] = []
    primary: str | None = None
    replicas: list[str] = []
    others = 0

    async def ask(client: Redis) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        master: dict[str, Any] = await client.sentinel_master(service.service_name)  # type: ignore[assignment]
        return master, await client.sentinel_slaves(service.service_name)

    try:
        answers = await asyncio.gather(*(ask(c) for c in manager.sentinels),
                                       return_exceptions=True)
        for (host, port), answer in zip(service.sentinels, answers, strict=True):
            if isinstance(answer, BaseException):
                unreachable.append(f"{host}:{port} ({answer})")
                continue
            reached.append(f"{host}:{port}")
            master, slaves = answer
            others = max(others, int(master.get("num-other-sentinels", 0)))
            if primary is None and master.get("is_master") and not master.get("is_odown"):
                primary = f"{master['ip']}:{master['port']}"
                replicas = [f"{s['ip']}:{s['port']}" for s in slaves
                            if not (s.get("is_sdown") or s.get("is_odown"))]
    finally:
        await manager.aclose()
    return SentinelSurvey(reached, unreachable, primary, replicas, others)
