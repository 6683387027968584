"""Redis clients for the bot and the workers: timeouts, health checks, and retries that
survive a restarted Redis (a pooled connection that died with the old server is replaced)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError


def bot_redis(url: str) -> Redis:
    """Short timeouts and two quick retries: a /pony is answered within Discord's 3 seconds
    whatever Redis is doing (queued, or told that the queue is unavailable)."""
    return Redis.from_url(
        url, socket_timeout=0.8, socket_connect_timeout=0.5, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2),
        retry_on_error=[ConnectionError, TimeoutError],
    )  # fmt: skip


def worker_redis(url: str, *, block_s: float) -> Redis:
    """Patient: a worker waits a restart out. The socket timeout leaves room for the blocking
    wait for new jobs (`block_s`)."""
    return Redis.from_url(
        url, socket_timeout=block_s + 5.0, socket_connect_timeout=2.0, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )  # fmt: skip
