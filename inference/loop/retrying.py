"""Waiting Redis out: a worker never exits on a blip. Each queue call a worker makes goes
through `patiently`, which retries connection errors with capped backoff until Redis answers
or the worker stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError, ReadOnlyError, RedisError, TimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
# Errors that mean "Redis is not there right now" (restarting, unreachable, failing over);
# anything else from Redis (a script bug, a wrong type) is a bug and is raised. READONLY is a
# primary demoted by a failover (the Sentinel client turns it into a ConnectionError; a plain
# URL still pointing at the old primary gets it as is).
UNAVAILABLE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError,
                                                ReadOnlyError)


class Stopping(Exception):
    """The worker is stopping while Redis is away: leave the job for another worker."""


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE):
        return True
    # Redis answers LOADING while it reads its AOF back after a restart.
    return isinstance(exc, RedisError) and str(exc).startswith("LOADING")


async def patiently(call: Callable[[], Awaitable[T]], what: str, *,
                    stopping: asyncio.Event | None = None) -> T:
    """`await call()`, again and again while Redis is unavailable."""
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            log.warning("%s: Redis unavailable (%s); retrying in %.1f s", what, exc, delay)
        if stopping is not None and stopping.is_set():
            raise Stopping(what)
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)
