"""The inference worker: take jobs from the queue, draw, upscale, post the images, acknowledge.

`Worker.process` reads top to bottom like a diffusers `__call__`: a batch's life in numbered
steps, each one call, each in the folder of its step:

1. hold every job taken: `loop/holding.py` (leases, and the cancel watcher of step 6);
2. what is left to do: a job that may be posted already is checked with Discord
   (`Poster.find_posted`), one that failed too often is given up (`loop/endings.py`);
3. group the jobs into pipeline calls: `drawing/calls.py`;
4. fetch the picture a U or V button or an upload starts from: `results/sources.py`;
5. load the model (an LRU cache on the device): `models/`;
6. sample: `drawing/` (sampling, img2img for variations and hires, live progress);
7. upscale: `results/upscale.py`;
8. check pictures: those bound for a channel that is not age-restricted pass the classifier,
   on what is posted (`safety/`); a flagged one is never posted there;
9. mark it `posting`, with the check's verdict: `Delivery.posting`, a queue move
   (`ponybot_core/queue/consumer.py`);
10. post: the flagged pictures where the server sends them, then the result, encoded by
    `results/post.py` (files fitted by `results/fit.py`), then the requester told privately;
11. record and acknowledge in one step: `Delivery.posted`, then the lease let go
    (`loop/endings.py`, where every other ending is too: cancelled, retried, given up).

A job is text to image (`/pony`, 🔁 Re-roll), an upscale (U buttons) or a variation (V buttons)
of an earlier image fetched back from Discord.

Promises kept here, with the queue's moves (`ponybot_core.queue.consumer.Delivery`):
- exactly once: a job is marked `posting` before its post and `posted` + acknowledged in one
  step after it; a job taken over in `posting` is checked with Discord before it is drawn
  again (`Poster.find_posted`), and channel posts carry a nonce Discord deduplicates;
- no double work: one lease keeper (`inference.loop.holding`) renews every job held, from take
  to ack; a job found held by another worker is dropped without posting;
- Redis blips are waited out (`inference.loop.retrying`): the worker never exits on one;
- one bad job costs only itself: a failed call of several jobs is drawn again one job at a
  time, and a job taken over from a dead worker is drawn alone (it may be what killed it).
Around the steps, in `loop/`: heartbeats (`beats.py`) and fault points for the crash tests
(`faults.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass

import discord
from redis.asyncio import Redis

from inference.drawing.calls import draw, pipeline_calls
from inference.drawing.progress import ProgressReporter, SamplingCancelled
from inference.drawing.sampling import Sampled
from inference.loop import metrics as worker_metrics
from inference.loop.beats import Beats, Throughput, tidy
from inference.loop.endings import Endings
from inference.loop.faults import fault_point
from inference.loop.holding import LeaseKeeper, in_background, watch_cancels
from inference.loop.retrying import is_unavailable, patiently
from inference.models.cache import ModelCache
from inference.models.device import Placement, choose_placement, warm_up
from inference.results.model_hash import MODEL_HASHES
from inference.results.post import (
    post_result,
    progress_editor,
    redirect_flagged,
    tell_requester,
)
from inference.results.sources import fetch_source_image
from inference.results.upscale import UpscalerCache, upscale_for
from inference.safety.channels import as_checked_now
from inference.safety.checking import PictureChecker
from inference.safety.files import classifier_problem, unchecked_warning
from ponybot_core import metrics
from ponybot_core.config import LoadedConfig
from ponybot_core.heartbeat import remove_heartbeat
from ponybot_core.job import JobKind
from ponybot_core.keys import Keys
from ponybot_core.logs import JobLog
from ponybot_core.poster import Poster
from ponybot_core.queue import Consumer, Delivery, JobStatus, Outcome

log = logging.getLogger(__name__)


@dataclass
class Drawn:
    """One job's images, waiting to be finished."""

    delivery: Delivery
    sampled: Sampled
    cancelled: bool
    timings: dict[str, float]
    started: float


class Worker:
    def __init__(self, loaded: LoadedConfig, redis: Redis, client: discord.Client, *,
                 name: str | None = None, placement: Placement | None = None,
                 models: ModelCache | None = None) -> None:
        self.config = config = loaded.config
        self.redis = redis
        self.keys = Keys(config.redis.key_prefix)
        self.name = name or os.environ.get("PONYBOT_WORKER_NAME") or \
            f"{socket.gethostname()}-{os.getpid()}"
        self.consumer = Consumer(redis, self.keys, self.name, lease_s=config.queue.lease_s,
                                 result_ttl_s=config.queue.result_ttl_s,
                                 cancelled_ttl_s=config.queue.cancelled_ttl_s,
                                 dead_ttl_s=config.queue.dead_ttl_s)
        self.leases = LeaseKeeper(self.consumer, lease_s=config.queue.lease_s)
        self.client = client
        self.poster = Poster(client)
        self.placement = placement or choose_placement(config.worker.device, config.worker.dtype)
        base_dir = loaded.path.parent
        self.models = models or ModelCache(config, base_dir=base_dir, placement=self.placement)
        self.upscalers = UpscalerCache(base_dir=base_dir, device=self.placement.device,
                                       dtype=self.placement.dtype)
        self.pictures = PictureChecker(config.safety, base_dir=base_dir,
                                       device=self.placement.device)
        self.throughput = Throughput()
        self.jobs_done = self.images_done = 0
        self.current: Delivery | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.endings = Endings(self.poster, self.leases, self.models, self._stopping)
        self.beats = Beats(redis, self.keys, config, base_dir, self.name, self.stats)

    async def run(self) -> None:
        await self.beats.check_files()
        for model_id in await self.models.preload(self.config.worker.preload):
            if self.config.worker.compile_unet and self.placement.device.type == "cuda":
                seconds = await asyncio.to_thread(warm_up, await self.models.get(model_id),
                                                  model_id, self.config)
                log.info("model %s: UNet compiled and warmed up in %.1f s", model_id, seconds)
        self._warn_about_the_picture_check()
        log.info("worker %s ready on %s", self.name, self.placement.describe())
        async with in_background(self.beats.run(), self.leases.run(), tidy(
                self.redis, self.keys, self.consumer, lease_s=self.config.queue.lease_s)):
            while not self._stopping.is_set():
                together, deliveries = await self.next_jobs()
                if deliveries:
                    await self.process(deliveries, together=together)
            await self.drain()
        with contextlib.suppress(Exception):  # it expires by itself anyway
            await remove_heartbeat(self.redis, self.keys, self.name)

    def stop(self) -> None:
        self._stopping.set()

    def _warn_about_the_picture_check(self) -> None:
        """Said once at start: no check where a model can draw NSFW, or a check configured
        that cannot run (its pictures will be withheld)."""
        if warning := unchecked_warning(self.config):
            log.warning("%s", warning)
        if problem := classifier_problem(self.config.safety, self.pictures.base_dir):
            log.error("%s", problem)

    async def next_jobs(self) -> tuple[bool, list[Delivery]]:
        """(may share a pipeline call, jobs). Jobs whose worker died come first: they have
        waited longest; each is drawn alone. While Redis is away: nothing, after a pause."""
        worker = self.config.worker
        try:
            if reclaimed := await self.consumer.reclaim(count=worker.max_batch):
                return False, reclaimed
            return True, await self.consumer.take(
                count=worker.max_batch, block_s=worker.block_ms / 1000,
                preferred_models=self.models.loaded,
                max_preference_wait_s=worker.max_preference_wait_s)
        except Exception as exc:
            log.log(logging.WARNING if is_unavailable(exc) else logging.ERROR,
                    "taking jobs failed (%r); retrying in 1 s", exc)
            await asyncio.sleep(1.0)
            return True, []

    async def process(self, deliveries: list[Delivery], *, together: bool = True) -> None:
        """A batch's life, step by step."""
        # 1. Hold: every job taken has its lease renewed until it is finished.
        for delivery in deliveries:
            self.leases.hold(delivery)
            fault_point("after_take", delivery.job_id)
        # 2. What is left to do: a job that failed too often is given up; one that may have
        #    been posted by a worker that died is checked with Discord before it is drawn.
        todo = [d for d in deliveries if await self._still_to_do(d)]
        # 3. Pipeline calls: compatible jobs together (or each alone, when taken over).
        calls = pipeline_calls([d.job for d in todo], self.placement, self.config.worker) \
            if together else [[i] for i in range(len(todo))]
        for call in calls:
            # 4-6. Fetch the source image, load the model, sample.
            drawn = await self._draw([todo[i] for i in call])
            # 7-11. Finish (upscale, check, post, record) while the next call samples; never more
            #       than one waits, so a slow Discord holds the sampler back.
            await self.drain()
            self._finishing = asyncio.create_task(self._finish_all(drawn))

    async def drain(self) -> None:
        """Wait for the jobs being finished, if any."""
        if self._finishing is not None:
            await self._finishing
            self._finishing = None

    async def _still_to_do(self, delivery: Delivery) -> bool:
        try:
            if delivery.status is JobStatus.POSTING:
                found = await self.poster.find_posted(delivery.job, await delivery.message())
                if found is not None:
                    JobLog(log, delivery.job_id).info("taken over; already posted as %s", found)
                    await self.endings.recorded(delivery, await patiently(
                        lambda: delivery.posted(found), "record", stopping=self._stopping))
                    return False
            if delivery.attempts > self.config.queue.max_attempts:
                await self.endings.give_up(delivery, f"it failed {delivery.attempts - 1} times")
                return False
        except Exception as exc:
            await self.endings.failed(delivery, exc)
            return False
        return True

    async def _draw(self, call: list[Delivery]) -> list[Drawn]:
        """The images of one pipeline call's jobs; [] for those that ended here. When a call of
        several jobs fails, each is drawn again alone: only a job that fails alone pays."""
        try:
            return await self._draw_once(call)
        except SamplingCancelled:
            for delivery in call:
                await self.endings.cancelled(delivery)
            return []
        except Exception as exc:
            if len(call) == 1:
                await self.endings.failed(call[0], exc)
                return []
            log.warning("a call of %d jobs failed (%r); drawing each alone", len(call), exc)
            await asyncio.to_thread(self.models.free_device_cache)
            return [drawn for delivery in call for drawn in await self._draw([delivery])]

    async def _draw_once(self, call: list[Delivery]) -> list[Drawn]:
        first = call[0].job
        for d in call:
            JobLog(log, d.job_id).info("start %s attempt=%d model=%s steps=%d count=%d batch=%d",
                                       d.job.kind.value, d.attempts, d.job.model_id, d.job.steps,
                                       d.job.count, len(call))
        self.current, started = call[0], time.perf_counter()
        try:
            async with watch_cancels(self.consumer, call) as cancels:
                # 4. The earlier image a U or V button starts from, fetched back from Discord
                #    (or the picture given to /pony image: or /upscale).
                source = None if first.kind is JobKind.GENERATE else \
                    await fetch_source_image(self.client, self.consumer.reads, first,
                                             self.config.uploads, cancels.all)
                fetched = time.perf_counter()
                # 5. The model (cached after the first job); an upscale needs none.
                pipe = None if first.kind is JobKind.UPSCALE else \
                    await self.models.get(first.model_id)
                if pipe is not None:  # A1111's `Model hash`: once per file, off the loop
                    await asyncio.to_thread(
                        MODEL_HASHES.compute, first.model_id,
                        self.models.base_dir / self.config.model(first.model_id).path)
                loaded = time.perf_counter()
                # 6. Sample, off the event loop so leases, heartbeats and progress flow; the
                #    sampler stops early only when every job of the call is cancelled.
                enabled = self.config.worker.progress and pipe is not None
                reporter = ProgressReporter(
                    progress_editor(self.poster, call), cancel=cancels.all,
                    interval_s=self.config.worker.progress_interval_s, enabled=enabled,
                    previews=enabled and await self._previews_allowed(call),
                    logger=JobLog(log, first.id))
                async with reporter:
                    results = await asyncio.to_thread(
                        draw, pipe, [d.job for d in call], source, self.config.worker,
                        reporter.pipeline_kwargs(),
                        self.config.model(first.model_id) if pipe is not None else None)
                sampled = time.perf_counter()
        finally:
            self.current = None
        fault_point("after_sample", first.id)
        if pipe is not None:
            self.throughput.record(sampled - loaded, sum(d.job.count for d in call))
            worker_metrics.drawn(self.config, [d.job for d in call], sampled - loaded,
                                 attempts=[d.attempts for d in call])
        timings = {"fetch": fetched - started, "load": loaded - fetched, "sample": sampled - loaded}
        return [Drawn(d, result, cancels.one[d.job_id].is_set(), timings, started)
                for d, result in zip(call, results, strict=True)]

    async def _previews_allowed(self, call: list[Delivery]) -> bool:
        """A preview is the picture being drawn and never passes the check: it is shown only
        when no job of the call has its pictures checked (an age-restricted channel, asked
        again now); the others show the step count alone. Without a classifier configured
        nothing is checked and the result shows what the previews did."""
        if not self.pictures.configured:
            return True
        for delivery in call:
            if (await as_checked_now(self.client, delivery.job)).picture_check.check:
                return False
        return True

    async def _finish_all(self, drawn: list[Drawn]) -> None:
        for item in drawn:
            try:
                await self._finish(item)
            except Exception as exc:
                await self.endings.failed(item.delivery, exc)

    async def _finish(self, item: Drawn) -> None:
        delivery, job = item.delivery, item.delivery.job
        if delivery.lost.is_set():
            return await self.endings.dropped(delivery, "another worker holds this job now")
        if item.cancelled or job.id in await patiently(
                lambda: self.consumer.cancel_requested([job.id]), "check for a cancel",
                stopping=self._stopping):
            return await self.endings.cancelled(delivery)
        finishing = time.perf_counter()
        notes = [item.sampled.note] if item.sampled.note else []
        # 7. Upscale: the U buttons, and `/pony upscale:true`.
        images, upscaled_by = await asyncio.to_thread(
            upscale_for, self.config, self.upscalers, job, item.sampled.images, notes)
        upscaled = time.perf_counter()
        # 8. Check pictures: what is posted, after any upscale; a crash from here on draws and
        #    checks again, so nothing is ever posted unchecked. A job queued as needing no
        #    check is checked unless its channel is still age-restricted now.
        as_checked = await as_checked_now(self.client, job)
        checked = await asyncio.to_thread(self.pictures.check, as_checked, images)
        checked_at = time.perf_counter()
        # 9. Mark it `posting`, recording the check's verdict: from here a crash may or may
        #    not have reached Discord.
        record = {"picture_check": checked.record} if checked.record else {}
        outcome = await patiently(lambda: delivery.posting(record), "mark posting",
                                  stopping=self._stopping)
        if outcome in (Outcome.LOST, Outcome.ILLEGAL):
            return await self.endings.dropped(delivery, f"the job is {outcome.value} here")
        if outcome is Outcome.GONE:  # Redis lost it: nobody else has it; the user still gets it
            JobLog(log, job.id).warning("the queue lost this job's state; posting it anyway")
        fault_point("before_post", job.id)
        # 10. The flagged pictures where the server sends them, first: a crash after the result
        #     is posted finishes the job as found, so they must be there already. Then encode
        #     (every file and the whole message under Discord's limits), post, and tell the
        #     requester privately.
        checked = await redirect_flagged(self.poster, self.config, as_checked, checked)
        message_id, encode_s = await post_result(
            self.poster, self.config, delivery, images, notes, upscaled_by,
            elapsed_s=item.timings["sample"] + upscaled - finishing, checked=checked)
        posted = time.perf_counter()
        fault_point("after_post", job.id)
        await tell_requester(self.poster, job, checked)
        # 11. Record it and acknowledge in one step; a Redis error here is waited out, never
        #     answered by doing the job again.
        timings = {**item.timings, "upscale": upscaled - finishing,
                   "check": checked_at - upscaled, "encode": encode_s,
                   "post": posted - checked_at - encode_s}
        await self.endings.recorded(delivery, await patiently(
            lambda: delivery.posted(message_id, timings=timings,
                                    worker_seconds=posted - item.started),
            "record the post", stopping=self._stopping))
        metrics.job_ended("withheld" if checked.withheld else "posted")
        fault_point("after_finish", job.id)
        self.jobs_done += 1
        self.images_done += len(images)
        JobLog(log, job.id).info("posted message=%s sample=%.2fs total=%.2fs", message_id,
                                 item.timings["sample"], posted - item.started)

    def stats(self) -> dict[str, object]:
        """The live figures a heartbeat carries."""
        return {"device": self.placement.describe(), "loaded": self.models.loaded,
                "failed": self.models.failures, "load_s": self.models.load_seconds,
                "current_job": self.current.job_id if self.current else None,
                "jobs_done": self.jobs_done, "images_done": self.images_done,
                "images_per_s": self.throughput.images_per_s(),
                "busy_fraction": self.throughput.busy_fraction()}


async def logged_in_client(token: str) -> discord.Client:
    """A REST-only discord.py client (no gateway): rate limits and retries come with it."""
    client = discord.Client(intents=discord.Intents.none())
    await client.login(token)
    return client

