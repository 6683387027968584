"""Cancel requests reaching a running pipeline call: `/queue cancel` or the Cancel button set a
flag in Redis; a watcher turns it into events the sampling thread checks at every step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from inference.background import in_background
from inference.retrying import is_unavailable
from ponybot_core.queue import Consumer, Delivery

log = logging.getLogger(__name__)

POLL_S = 0.5


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
            await asyncio.sleep(POLL_S)
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
