"""Redis clients for the bot and the workers: timeouts, health checks, and retries that
survive a restarted Redis (a pooled connection that died with the old server is replaced)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

# The bot's connections to Redis. A command holds one for a round trip; more commands at once
# wait for one (FIFO) rather than fail: redis-py's own pool refuses past its size (100 since
# redis-py 8), which told users of a burst that the queue was unavailable. Bounded, a cold
# burst opens (and greets: HELLO, CLIENT SETINFO) at most this many, and N bot processes
# hold at most N times this many.
BOT_CONNECTIONS = 32
# How long a command waits for a free connection before its user is told the queue is
# unavailable: Discord's 3 seconds leave the rest for the enqueue and the answer.
CONNECTION_WAIT_S = 1.5


def as_str(value: bytes | str | int | float, *, errors: str = "strict") -> str:
    """A Redis reply as text: the clients made here answer bytes (no `decode_responses`), and
    scripts may answer numbers. `errors="replace"` for what people may have hand-edited."""
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


def bot_redis(url: str) -> Redis:
    """Short timeouts and two quick retries: a /pony is answered within Discord's 3 seconds
    whatever Redis is doing (queued, or told that the queue is unavailable)."""
    return Redis.from_pool(BlockingConnectionPool.from_url(
        url, max_connections=BOT_CONNECTIONS, timeout=CONNECTION_WAIT_S,
        socket_timeout=0.8, socket_connect_timeout=0.5, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2),
        retry_on_error=[ConnectionError, TimeoutError],
    ))  # fmt: skip


def worker_redis(url: str, *, block_s: float) -> Redis:
    """Patient: a worker waits a restart out. The socket timeout leaves room for the blocking
    wait for new jobs (`block_s`)."""
    return Redis.from_url(
        url, socket_timeout=block_s + 5.0, socket_connect_timeout=2.0, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )  # fmt: skip
