"""Keep queued messages' positions true: a background task edits a queued message when its
position has moved by a meaningful amount, throttled per message and per cycle so a long
queue never floods Discord."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from core.job import Job
from core.jobqueue import JobStatus
from core.messages import queued_text
from core.poster import Poster

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)


def worth_an_edit(shown: int, now: int) -> bool:
    """Small moves deep in the queue are noise; reaching the front is news."""
    if now >= shown:
        return False
    return now <= 3 or shown - now >= max(1, shown // 4)


class PositionUpdater:
    def __init__(self, bot: PonyBot, *, interval_s: float = 5.0,
                 min_gap_s: float = 15.0, max_edits_per_cycle: int = 20) -> None:
        self.bot = bot
        self.poster = Poster(bot)
        self.interval_s = interval_s
        self.min_gap_s = min_gap_s
        self.max_edits_per_cycle = max_edits_per_cycle

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.update_once()
            except (RedisError, OSError) as exc:
                log.warning("position update skipped: %s", exc)

    async def update_once(self) -> int:
        """One pass over the queue; returns the number of messages edited."""
        edits = 0
        for job_id, position in (await self.bot.queue.positions()).items():
            if edits >= self.max_edits_per_cycle:
                break
            state = await self.bot.queue.status(job_id)
            if state.get("status") != JobStatus.QUEUED or not state.get("message_id"):
                continue
            shown = int(state.get("shown_position") or 0)
            if not worth_an_edit(shown, position):
                continue
            if time.time() - float(state.get("shown_at") or 0) < self.min_gap_s:
                continue
            job = Job.from_json(state["job"])
            text = queued_text(job, position=position, model_name=self._model_name(job))
            if await self.poster.edit_queued(job, int(state["message_id"]), text):
                await self.bot.queue.set_shown_position(job_id, position)
                edits += 1
        return edits

    def _model_name(self, job: Job) -> str:
        try:
            return self.bot.config.model(job.model_id).name
        except KeyError:
            return job.model_id
