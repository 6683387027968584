"""Tasks that run beside a worker's jobs: while a block runs, cancelled after it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def in_background(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `coros` while the block runs; cancel them after."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
