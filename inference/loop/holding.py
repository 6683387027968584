"""Holding the jobs a worker has taken, from take to finish (step 1 of `Worker.process`), with
work that runs beside them in the background:

- one lease keeper renews every job held: jobs waiting behind a model load, a long sampling or
  the previous batch's upload are renewed like the one being drawn, so no other worker takes
  them over while this one is alive. A job found held by another worker (this one was presumed
  dead) is marked `lost`;
- a cancel watcher turns `/queue cancel` or the Cancel button (a flag in Redis) into events the
  sampling thread checks at every step; a job whose lease was lost counts as cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from inference.loop.retrying import is_unavailable
from ponybot_core.logs import JobLog
from ponybot_core.queue import Consumer, Delivery

log = logging.getLogger(__name__)

# How often the cancel watcher asks Redis.
CANCEL_POLL_S = 0.5


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


class LeaseKeeper:
    def __init__(self, consumer: Consumer, *, lease_s: float) -> None:
        self.consumer = consumer
        # Three renewals per lease: one failed renewal (a blip) costs nothing.
        self.interval_s = lease_s / 3
        self.held: dict[str, Delivery] = {}

    def hold(self, delivery: Delivery) -> None:
        self.held[delivery.job_id] = delivery

    def release(self, delivery: Delivery) -> None:
        self.held.pop(delivery.job_id, None)

    async def renew_now(self) -> None:
        deliveries = list(self.held.values())
        for delivery in await self.consumer.renew(deliveries):
            JobLog(log, delivery.job_id).warning(
                "lease lost: another worker holds this job now; dropping it")
            self.release(delivery)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.renew_now()
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("lease renewal failed")
                else:
                    log.warning("lease renewal skipped: Redis unavailable (%s)", exc)


@dataclass(frozen=True)
class Cancels:
    one: dict[str, threading.Event]  # job id -> cancelled (or its lease lost)
    all: threading.Event  # every job of the pipeline call is: stop sampling


@contextlib.asynccontextmanager
async def watch_cancels(consumer: Consumer, call: Sequence[Delivery]) -> AsyncIterator[Cancels]:
    """Events for the jobs of one pipeline call, kept up to date while the block runs. A job
    whose lease turned out lost counts as cancelled: its images would be thrown away."""
    cancels = Cancels(one={d.job_id: threading.Event() for d in call}, all=threading.Event())

    async def watch() -> None:
        while not cancels.all.is_set():
            await asyncio.sleep(CANCEL_POLL_S)
            try:
                asked = await consumer.cancel_requested([d.job_id for d in call])
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("cancel check failed")
                continue
            for d in call:
                if d.job_id in asked or d.lost.is_set():
                    cancels.one[d.job_id].set()
            if all(e.is_set() for e in cancels.one.values()):
                cancels.all.set()

    async with in_background(watch()):
        yield cancels
