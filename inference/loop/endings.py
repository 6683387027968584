"""How a job a worker holds ends when it is not posted: cancelled, given back for another try,
or given up (dead-lettered) with a reason the user is told. The user is told first, the queue
second: telling is idempotent (the same message edited, a channel post's nonce), so a crash in
between tells twice at worst, never not at all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import torch

from inference.loop.holding import LeaseKeeper
from inference.loop.retrying import Stopping, patiently
from inference.models.cache import ModelCache
from inference.models.loading import ModelLoadError
from inference.results.sources import SourceUnavailable
from inference.results.upscale import UpscalerUnavailable
from ponybot_core import metrics
from ponybot_core.logs import JobLog
from ponybot_core.messages import cancelled_text, failure_text
from ponybot_core.poster import Poster, PostFailed
from ponybot_core.queue import Delivery, Outcome

log = logging.getLogger(__name__)


def permanent_reason(exc: Exception, model_id: str) -> str | None:
    """What to tell the user when retrying cannot help; None when another try may succeed
    (out of memory, Discord or Redis down, an injected fault...)."""
    if isinstance(exc, ModelLoadError):
        return f"the model {model_id!r} could not be loaded"
    if isinstance(exc, SourceUnavailable | UpscalerUnavailable):
        return str(exc)
    if isinstance(exc, PostFailed) and exc.permanent:
        return "Discord refused the result"
    return None


class Endings:
    def __init__(self, poster: Poster, leases: LeaseKeeper, models: ModelCache,
                 stopping: asyncio.Event) -> None:
        self.poster = poster
        self.leases = leases
        self.models = models
        self.stopping = stopping

    async def recorded(self, delivery: Delivery, outcome: Outcome) -> None:
        """After the `posted` move: the job is no longer this worker's."""
        if not outcome.done and outcome is not Outcome.GONE:
            JobLog(log, delivery.job_id).warning("could not record the post: %s", outcome.value)
        self.leases.release(delivery)

    async def dropped(self, delivery: Delivery, why: str) -> None:
        """Another worker holds the job now (or it moved on): let go, post nothing."""
        JobLog(log, delivery.job_id).warning("not posting: %s", why)
        metrics.job_ended("dropped")
        self.leases.release(delivery)

    async def cancelled(self, delivery: Delivery) -> None:
        JobLog(log, delivery.job_id).info("cancelled while running")
        metrics.job_ended("cancelled")
        await self._end(delivery, cancelled_text(delivery.job), delivery.cancelled, "cancel")

    async def failed(self, delivery: Delivery, exc: Exception) -> None:
        """Given up when retrying cannot help, else back to the queue for another try."""
        jlog = JobLog(log, delivery.job_id)
        try:
            reason = permanent_reason(exc, delivery.job.model_id)
            if isinstance(exc, Stopping):
                self._left(delivery)
            elif reason is not None:
                jlog.error("cannot succeed: %r", exc)
                await self.give_up(delivery, reason)
            else:
                jlog.warning("failed on attempt %d, will retry: %r", delivery.attempts, exc,
                             exc_info=not isinstance(exc, PostFailed))
                metrics.job_ended("retried")
                if isinstance(exc, torch.OutOfMemoryError):
                    await asyncio.to_thread(self.models.free_device_cache)
                await patiently(delivery.retry, "give the job back", stopping=self.stopping)
        except Stopping:
            self._left(delivery)
        finally:
            self.leases.release(delivery)

    async def give_up(self, delivery: Delivery, reason: str) -> None:
        JobLog(log, delivery.job_id).error("dead-lettered: %s", reason)
        metrics.job_ended("dead")
        await self._end(delivery, failure_text(delivery.job, reason),
                        lambda: delivery.give_up(reason), "dead-letter")

    async def _end(self, delivery: Delivery, notice: str,
                   move: Callable[[], Awaitable[Outcome]], what: str) -> None:
        """Tell the user, then make the move; nothing when another worker holds the job."""
        try:
            if not delivery.lost.is_set():
                await self.poster.tell(delivery.job, await delivery.message(), notice)
                await patiently(move, f"record the {what}", stopping=self.stopping)
        except Stopping:
            self._left(delivery)
        finally:
            self.leases.release(delivery)

    def _left(self, delivery: Delivery) -> None:
        JobLog(log, delivery.job_id).warning(
            "stopping while Redis is away: the job is left for another worker")
