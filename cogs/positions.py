"""Queued messages stay true while they wait: a position is edited when it moves meaningfully
(throttled per message and per cycle, so a long queue never floods Discord), and a user whose
job the queue lost (Redis came back empty) is told privately to ask again. The notice is a
message of its own, never an edit: if the job did run after all, its result is not covered."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from discord.ext import commands, tasks

from ponybot_core.job import Job
from ponybot_core.logs import JobLog
from ponybot_core.messages import lost_text, queued_text
from ponybot_core.poster import Poster
from ponybot_core.queue import JobStatus

if TYPE_CHECKING:
    from bot.app import PonyBot

log = logging.getLogger(__name__)

UPDATE_EVERY_S = 5.0
MIN_GAP_S = 15.0
MAX_EDITS_PER_CYCLE = 20


def worth_an_edit(shown: int, now: int) -> bool:
    """Small moves deep in the queue are noise; reaching the front is news."""
    if now >= shown:
        return False
    return now <= 3 or shown - now >= max(1, shown // 4)


class PositionsCog(commands.Cog):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        self.poster = Poster(bot)
        self.min_gap_s = MIN_GAP_S
        # Jobs this bot queued, while their interaction token lives, with the status last seen.
        self.watched: dict[str, Watched] = {}

    async def cog_load(self) -> None:
        self.keep_true.start()

    async def cog_unload(self) -> None:
        self.keep_true.cancel()

    @commands.Cog.listener()
    async def on_job_queued(self, job: Job, message_id: int) -> None:
        """Dispatched by `bot.submit` once the queued message is shown."""
        self.watched[job.id] = Watched(job, message_id)

    @tasks.loop(seconds=UPDATE_EVERY_S)
    async def keep_true(self) -> None:
        # Caught here, not in an error handler: an unhandled error would end the loop for good.
        try:
            await self.update_positions()
            await self.tell_lost()
        except Exception as exc:
            log.warning("queued messages not updated this cycle: %r", exc)

    @keep_true.before_loop
    async def _ready(self) -> None:
        await self.bot.wait_until_ready()

    async def update_positions(self) -> int:
        """One pass over the queued jobs of this process's servers (`PonyBot.owns`); returns
        the number of messages edited. Every such job's few deciding fields are read
        (`QueueReads.shown`, in chunks); a whole job only for a message about to be edited,
        which is at most a few per cycle."""
        reads = self.bot.queue_reads
        # Only the servers of this process's shards: each bot process edits its own servers'
        # messages, so N processes never edit one message N times.
        positions = await reads.positions(self.bot.owns)
        edits = 0
        shown = await reads.shown(positions)
        for job_id, position in positions.items():
            if edits >= MAX_EDITS_PER_CYCLE:
                break
            seen = shown[job_id]
            if seen is None or seen.status is not JobStatus.QUEUED or seen.message_id is None:
                continue
            # Its token is gone (a long wait): the edit could only fail, every cycle anew.
            if not seen.token_kept:
                continue
            if not worth_an_edit(seen.shown_position or 0, position):
                continue
            if time.time() - (seen.shown_at or 0.0) < self.min_gap_s:
                continue
            state = await reads.state(job_id)
            # Taken or gone since its fields were read: its worker owns the message now.
            if state is None or state.status is not JobStatus.QUEUED or state.message_id is None:
                continue
            job = state.job()
            text = queued_text(job, position=position, model_name=_model_name(self.bot, job))
            if await self.poster.edit_queued(job, state.message_id, text):
                await self.bot.queue.record_shown_position(job_id, position)
                edits += 1
        return edits

    async def tell_lost(self) -> int:
        """Tell the users of watched jobs that vanished from Redis while they waited (it came
        back empty) to ask again; forget jobs that finished or whose token expired. A job that
        vanished while running is left to its worker, which still has it and posts it.
        Returns how many users were told."""
        now = time.time()
        for job_id, watched in list(self.watched.items()):
            if not watched.job.token_usable(now):
                del self.watched[job_id]
        states = await self.bot.queue_reads.shown(self.watched)
        told = 0
        for job_id, state in states.items():
            watched = self.watched[job_id]
            if state is not None:
                watched.last_seen = state.status
                if state.finished:
                    del self.watched[job_id]
                continue
            del self.watched[job_id]
            if watched.last_seen is not JobStatus.QUEUED:
                continue
            JobLog(log, job_id).warning("lost by the queue (Redis came back without it)")
            if await self.poster.whisper(watched.job, lost_text(watched.job)):
                told += 1
        return told


@dataclass
class Watched:
    job: Job
    message_id: int
    last_seen: JobStatus = JobStatus.QUEUED


def _model_name(bot: PonyBot, job: Job) -> str:
    try:
        return bot.config.model(job.model_id).name
    except KeyError:
        return job.model_id


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(PositionsCog(bot))
