"""A job handed to one worker, and every move the worker makes with it until it is finished.

The delivery holds the worker's lease on the job: each move is a compare-and-set in Redis that
succeeds only while this worker still holds the job (another worker may have taken it over
after this one stopped renewing) and only along `ponybot_core.queue.state.LEGAL`. A move that
finds the job held by someone else answers `LOST`, and the worker drops the job without
posting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from ponybot_core.hires import work_units
from ponybot_core.job import Job
from ponybot_core.queue.state import FINAL, JobStatus, sources
from ponybot_core.queue.views import text

if TYPE_CHECKING:
    from ponybot_core.queue.consumer import Consumer

# How long to wait for the bot to record the queued message before posting a new one instead.
MESSAGE_WAIT_S = 5.0
# Dead letters kept for the admin (approximately: trimmed with MAXLEN ~).
DEAD_LETTERS_KEPT = 10_000


class Outcome(StrEnum):
    OK = "ok"
    SAME = "same"  # already there: a retried call whose first reply was lost
    LOST = "lost"  # another worker holds the job now
    ILLEGAL = "illegal"  # the job is somewhere this move cannot start from
    GONE = "gone"  # Redis has no such job any more (flushed, or expired)

    @property
    def done(self) -> bool:
        return self in (Outcome.OK, Outcome.SAME)


@dataclass(eq=False)
class Delivery:
    consumer: Consumer
    job_id: str
    job: Job
    entry_id: str
    attempts: int
    lease: str
    # RUNNING for a job to draw; POSTING for one taken over from a worker that may have
    # posted it already (confirm with Discord before drawing it again).
    status: JobStatus
    message_id: int | None = None
    # Set when the lease was found held by another worker: stop, post nothing.
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _message_resolved: bool = False


    async def message(self) -> int | None:
        """The queued message's id, resolved once. The bot records it right after answering,
        which can be a moment after a fast worker took the job; None when it never comes
        (the result is then posted in the channel)."""
        if self._message_resolved or self.message_id is not None:
            return self.message_id
        deadline = self.job.created_at + MESSAGE_WAIT_S
        while True:
            state = await self.consumer.view.state(self.job_id)
            if state is not None and state.message_id is not None:
                self.message_id = state.message_id
                break
            if state is None or time.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        self._message_resolved = True
        return self.message_id

    async def posting(self) -> Outcome:
        """About to post: from here a crash may or may not have reached Discord."""
        outcome = await self._move(JobStatus.POSTING)
        if outcome.done:
            self.status = JobStatus.POSTING
        return outcome

    async def posted(self, result_message_id: int | None, *,
                     timings: Mapping[str, float] = {}, worker_seconds: float | None = None
                     ) -> Outcome:
        """The result is on Discord: record it and acknowledge, in one step."""
        fields: dict[str, str] = {"posted_at": f"{time.time():.6f}"}
        fields.update({f"{name}_s": f"{value:.6f}" for name, value in timings.items()})
        if result_message_id is not None:
            fields["result_message_id"] = str(result_message_id)
        # ETAs multiply these by the work queued: keep them per plain job's worth of it.
        per_unit = None if worker_seconds is None else worker_seconds / work_units(self.job)
        return await self._move(JobStatus.POSTED, effect="end", fields=fields,
                                worker_seconds=per_unit)

    async def retry(self) -> Outcome:
        """Give the job back: to the front of its server's list, for any worker to take."""
        return await self._move(JobStatus.QUEUED, effect="requeue")

    async def give_up(self, reason: str) -> Outcome:
        """Dead-letter the job with the reason (for the admin; the user is told by the worker)."""
        return await self._move(JobStatus.DEAD, effect="end", fields={"error": reason[:2000]},
                                dead_reason=reason[:2000])

    async def cancelled(self) -> Outcome:
        return await self._move(JobStatus.CANCELLED, effect="end")

    async def _move(self, target: JobStatus, *, effect: str = "",
                    fields: Mapping[str, str] = {}, dead_reason: str = "",
                    worker_seconds: float | None = None) -> Outcome:
        c = self.consumer
        k = c.keys
        flat = [item for pair in fields.items() for item in pair]
        reply = await c.scripts.transition(
            keys=[k.job(self.job_id), k.stream, k.ring, k.paused, k.dead, k.durations,
                  k.token(self.job_id)],
            args=[c.group, self.lease, target.value, sources(target), effect,
                  c.lifetimes.of(target) if target in FINAL else "",
                  dead_reason, DEAD_LETTERS_KEPT,
                  "" if worker_seconds is None else f"{worker_seconds:.3f}", *flat],
        )  # fmt: skip
        outcome = Outcome(text(reply[0]))
        if outcome is Outcome.LOST:
            self.lost.set()
        return outcome
