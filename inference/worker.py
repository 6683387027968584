"""The inference worker: take jobs from the queue, draw, upscale, post the images, acknowledge.

`Worker.process` reads top to bottom like a diffusers `__call__`: a batch's life in numbered
steps, each one call. A job is one of three kinds (`core.job.JobKind`): text to image (`/pony`,
🔁 Re-roll), an upscale (U buttons) or an img2img variation (V buttons) of an earlier image,
fetched back from Discord (`inference.sources`).

Promises kept here, with the queue's moves (`core.queue.delivery`):
- exactly once: a job is marked `posting` before its post and `posted` + acknowledged in one
  step after it; a job taken over in `posting` is checked with Discord before it is drawn
  again, and channel posts carry a nonce Discord deduplicates;
- no double work: one lease keeper (`inference.leases`) renews every job held, from take to
  ack; a job found held by another worker is dropped without posting;
- Redis blips are waited out (`inference.retrying`): the worker never exits on one;
- one bad job costs only itself: a failed batch is drawn again one job at a time, and a job
  taken over from a dead worker is drawn alone (it may be what killed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import discord
import torch
from PIL.Image import Image
from redis.asyncio import Redis

from core.config import Settings
from core.heartbeat import (
    WorkerHeartbeat,
    publish_heartbeat,
    read_heartbeats,
    remove_heartbeat,
)
from core.job import Job, JobKind
from core.keys import Keys
from core.logs import JobLog
from core.messages import cancelled_text, failure_text
from core.poster import Post, Poster, PostFailed
from core.queue import Consumer, Delivery, JobStatus, Outcome
from inference.background import in_background
from inference.device import Placement, choose_placement
from inference.drawing import draw, pipeline_calls
from inference.faults import fault_point
from inference.inventory import Inventory, check_all
from inference.leases import LeaseKeeper
from inference.loading import ModelLoadError
from inference.models import ModelCache
from inference.progress import ProgressReporter, SamplingCancelled
from inference.result_post import UpscalerUnavailable, files_budget, render_post, upscale_images
from inference.retrying import Stopping, is_unavailable, patiently
from inference.sampling import Sampled, sample_batch
from inference.sources import SourceUnavailable, fetch_source_image
from inference.throughput import Throughput
from inference.upscale import UpscalerCache

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
CANCEL_POLL_S = 0.5
# Consumers of departed workers are deleted once idle this long (and never below 10 leases).
DEPARTED_AFTER_S = 600.0
TIDY_EVERY_S = 60.0
# A message Discord calls too large is fitted to half the size, at most this many times.
SMALLER_POSTS = 4


@dataclass
class Drawn:
    """One job's images, waiting to be finished."""

    delivery: Delivery
    sampled: Sampled
    cancelled: bool
    timings: dict[str, float]
    started: float


@dataclass(frozen=True)
class Cancels:
    one: dict[str, threading.Event]  # job id -> cancelled (or lost)
    all: threading.Event  # every job of the pipeline call is cancelled: stop sampling


class Worker:
    def __init__(self, settings: Settings, redis: Redis, client: discord.Client, *,
                 name: str | None = None, placement: Placement | None = None,
                 models: ModelCache | None = None) -> None:
        self.settings = settings
        self.config = settings.config
        self.redis = redis
        self.keys = Keys(self.config.redis.key_prefix)
        self.name = name or os.environ.get("PONYBOT_WORKER_NAME") or \
            f"{socket.gethostname()}-{os.getpid()}"
        self.consumer = Consumer(redis, self.keys, self.name, lease_s=self.config.queue.lease_s,
                                 result_ttl_s=self.config.queue.result_ttl_s)
        self.leases = LeaseKeeper(self.consumer, lease_s=self.config.queue.lease_s)
        self.client = client
        self.poster = Poster(client)
        self.placement = placement or choose_placement(self.config.worker.device,
                                                       self.config.worker.dtype)
        self.models = models or ModelCache(self.config, base_dir=settings.path.parent,
                                           placement=self.placement)
        self.upscalers = UpscalerCache(base_dir=settings.path.parent,
                                       device=self.placement.device, dtype=self.placement.dtype)
        self.throughput = Throughput()
        self.jobs_done = 0
        self.images_done = 0
        self.current: Delivery | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.inventory: Inventory | None = None

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self._check_files()
        await self._preload()
        log.info("worker %s ready on %s", self.name, self.placement.describe())
        async with in_background(self._beat(), self.leases.run(), self._tidy()):
            while not self._stopping.is_set():
                together, deliveries = await self.next_jobs()
                if deliveries:
                    await self.process(deliveries, together=together)
            await self.drain()
        with contextlib.suppress(Exception):
            await remove_heartbeat(self.redis, self.keys, self.name)

    def stop(self) -> None:
        self._stopping.set()

    async def next_jobs(self) -> tuple[bool, list[Delivery]]:
        """(may share a pipeline call, jobs). Jobs whose worker died come first: they have
        waited longest; each is drawn alone. While Redis is away: nothing, after a pause."""
        worker = self.config.worker
        try:
            reclaimed = await self.consumer.reclaim(count=worker.max_batch)
            if reclaimed:
                return False, reclaimed
            return True, await self.consumer.take(
                count=worker.max_batch, block_s=worker.block_ms / 1000,
                preferred_models=self.models.loaded,
                max_preference_wait_s=worker.max_preference_wait_s)
        except Exception as exc:
            if is_unavailable(exc):
                log.warning("queue unavailable (%s); retrying in 1 s", exc)
            else:
                log.exception("taking jobs failed; retrying in 1 s")
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
            # 7-11. Finish (upscale, encode, post, record) while the next call samples; never
            #       more than one waits, so a slow Discord holds the sampler back.
            await self.drain()
            self._finishing = asyncio.create_task(self._finish_all(drawn))

    async def drain(self) -> None:
        """Wait for the jobs being finished, if any."""
        if self._finishing is not None:
            await self._finishing
            self._finishing = None

    # --- 2. what is left to do --------------------------------------------------------------

    async def _still_to_do(self, delivery: Delivery) -> bool:
        try:
            if delivery.status is JobStatus.POSTING and await self._posted_already(delivery):
                return False
            if delivery.attempts > self.config.queue.max_attempts:
                await self._give_up(delivery, f"it failed {delivery.attempts - 1} times")
                return False
        except Exception as exc:
            await self._failed(delivery, exc)
            return False
        return True

    async def _posted_already(self, delivery: Delivery) -> bool:
        """For a job taken over in `posting`: True when its result is on Discord (then it is
        recorded, not drawn again). A job whose check fails is left for a later takeover."""
        job = delivery.job
        found = await self.poster.find_posted(job, await delivery.message())
        if found is None:
            JobLog(log, job.id).info("taken over while posting; not on Discord: drawing it")
            return False
        JobLog(log, job.id).info("taken over while posting; already posted as %s", found)
        await self._record(delivery, await patiently(
            lambda: delivery.posted(found), "record the post", stopping=self._stopping))
        return True

    # --- 4-6. draw --------------------------------------------------------------------------

    async def _draw(self, call: list[Delivery]) -> list[Drawn]:
        """The images of the jobs of one pipeline call; [] for those that ended here. When a
        call of several jobs fails, each is drawn again alone: only a job that fails on its own
        is charged for it."""
        try:
            return await self._draw_once(call)
        except SamplingCancelled:
            for delivery in call:
                await self._cancelled(delivery)
            return []
        except Exception as exc:
            if len(call) == 1:
                await self._failed(call[0], exc)
                return []
            log.warning("a call of %d jobs failed (%r); drawing each alone", len(call), exc)
            await asyncio.to_thread(self.models.free_device_cache)
            return [drawn for delivery in call for drawn in await self._draw([delivery])]

    async def _draw_once(self, call: list[Delivery]) -> list[Drawn]:
        first = call[0].job
        for d in call:
            JobLog(log, d.job_id).info(
                "start %s attempt=%d model=%s steps=%d count=%d size=%dx%d batch=%d",
                d.job.kind.value, d.attempts, d.job.model_id, d.job.steps, d.job.count,
                d.job.width, d.job.height, len(call))
        self.current = call[0]
        started = time.perf_counter()
        try:
            async with self._watch_cancels(call) as cancels:
                # 4. The earlier image a U or V button starts from, fetched back from Discord.
                source = await self._source_image(first)
                fetched = time.perf_counter()
                # 5. The model (cached after the first job); an upscale needs none.
                pipe = None if first.kind is JobKind.UPSCALE else \
                    await self.models.get(first.model_id)
                loaded = time.perf_counter()
                # 6. Sample, off the event loop so leases, heartbeats and progress flow; the
                #    sampler stops early only when every job of the call is cancelled.
                reporter = ProgressReporter(
                    self._progress_editor(call), interval_s=self.config.worker.progress_interval_s,
                    enabled=self.config.worker.progress and pipe is not None,
                    cancel=cancels.all, logger=JobLog(log, first.id))
                async with reporter:
                    results = await asyncio.to_thread(
                        draw, pipe, [d.job for d in call], source, self.config.worker,
                        reporter.pipeline_kwargs())
                sampled = time.perf_counter()
        finally:
            self.current = None
        fault_point("after_sample", first.id)
        if pipe is not None:
            self.throughput.record(sampled - loaded, sum(d.job.count for d in call))
        timings = {"fetch": fetched - started, "load": loaded - fetched, "sample": sampled - loaded}
        return [Drawn(d, result, cancels.one[d.job_id].is_set(), timings, started)
                for d, result in zip(call, results, strict=True)]

    # --- 7-11. finish -----------------------------------------------------------------------

    async def _finish_all(self, drawn: list[Drawn]) -> None:
        for item in drawn:
            try:
                await self._finish(item)
            except Exception as exc:
                await self._failed(item.delivery, exc)

    async def _finish(self, item: Drawn) -> None:
        delivery, job = item.delivery, item.delivery.job
        jlog = JobLog(log, job.id)
        if delivery.lost.is_set():
            jlog.warning("another worker holds this job now; not posting it")
            self.leases.release(delivery)
            return
        if item.cancelled or job.id in await patiently(
                lambda: self.consumer.cancel_requested([job.id]), "check for a cancel",
                stopping=self._stopping):
            await self._cancelled(delivery)
            return
        finishing = time.perf_counter()
        notes = [item.sampled.note] if item.sampled.note else []
        # 7. Upscale: the U buttons, and `/pony upscale:true`.
        images, upscaled_by = await self._upscale(job, item.sampled.images, notes)
        upscaled = time.perf_counter()
        # 8. Mark it `posting`: from here a crash may or may not have reached Discord.
        outcome = await patiently(delivery.posting, "mark posting", stopping=self._stopping)
        if outcome in (Outcome.LOST, Outcome.ILLEGAL):
            jlog.warning("not posting: the job is %s here (%s)", outcome.value, delivery.status)
            self.leases.release(delivery)
            return
        if outcome is Outcome.GONE:  # Redis lost it: nobody else has it; the user still gets it
            jlog.warning("the queue lost this job's state; posting it anyway")
        fault_point("before_post", job.id)
        # 9-10. Encode (every file and the whole message under Discord's limits) and post.
        message_id, encode_s = await self._post(delivery, images, notes, upscaled_by,
                                                elapsed_s=item.timings["sample"]
                                                + upscaled - finishing)
        posted = time.perf_counter()
        fault_point("after_post", job.id)
        # 11. Record it and acknowledge, in one step; a Redis error here is waited out,
        #     never answered by doing the job again.
        outcome = await patiently(lambda: delivery.posted(
            message_id, timings={**item.timings, "upscale": upscaled - finishing,
                                 "encode": encode_s,
                                 "post": posted - upscaled - encode_s},
            worker_seconds=posted - item.started), "record the post", stopping=self._stopping)
        await self._record(delivery, outcome)
        fault_point("after_finish", job.id)
        self.jobs_done += 1
        self.images_done += len(images)
        jlog.info("posted message=%s sample=%.2fs upscale=%.2fs total=%.2fs", message_id,
                  item.timings["sample"], upscaled - finishing, posted - item.started)

    async def _post(self, delivery: Delivery, images: list[Image], notes: list[str],
                    upscaled_by: str | None, *, elapsed_s: float) -> tuple[int, float]:
        """(message id, seconds spent encoding). A message Discord calls too large is fitted
        again to half the size: a job never fails for size."""
        job = delivery.job
        budget = files_budget(self.config)
        encode_s = 0.0
        for attempt in range(SMALLER_POSTS + 1):
            started = time.perf_counter()
            post: Post = await asyncio.to_thread(
                render_post, self.config, job, images, elapsed_s=elapsed_s, notes=list(notes),
                upscaled_by=upscaled_by, total_limit=budget)
            encode_s += time.perf_counter() - started
            try:
                return await self.poster.deliver(job, await delivery.message(), post), encode_s
            except PostFailed as exc:
                if not exc.too_large or attempt == SMALLER_POSTS:
                    raise
                budget = sum(len(a.data) for a in post.attachments) // 2
                JobLog(log, job.id).warning("Discord: message too large; refitting to %d bytes",
                                            budget)
        raise AssertionError("unreachable")

    # --- endings ----------------------------------------------------------------------------

    async def _record(self, delivery: Delivery, outcome: Outcome) -> None:
        if not outcome.done and outcome is not Outcome.GONE:
            JobLog(log, delivery.job_id).warning("could not record the post: %s", outcome.value)
        self.leases.release(delivery)

    async def _cancelled(self, delivery: Delivery) -> None:
        job = delivery.job
        JobLog(log, job.id).info("cancelled while running")
        if not delivery.lost.is_set():
            await self.poster.tell(job, await delivery.message(), cancelled_text(job))
            await patiently(delivery.cancelled, "record the cancel", stopping=self._stopping)
        self.leases.release(delivery)

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        """A job that failed: given up when retrying cannot help, else back to the queue."""
        job = delivery.job
        jlog = JobLog(log, job.id)
        try:
            if isinstance(exc, Stopping):
                jlog.warning("stopping while Redis is away: the job is left for another worker")
            elif isinstance(exc, ModelLoadError):
                jlog.error("model failed to load: %s", exc)
                await self._give_up(delivery, f"the model {job.model_id!r} could not be loaded")
            elif isinstance(exc, SourceUnavailable | UpscalerUnavailable):
                await self._give_up(delivery, str(exc))
            elif isinstance(exc, PostFailed) and exc.permanent:
                jlog.error("post refused for good: %s", exc)
                await self._give_up(delivery, "Discord refused the result")
            else:
                jlog.warning("failed on attempt %d, will retry: %r", delivery.attempts, exc,
                             exc_info=not isinstance(exc, PostFailed))
                if isinstance(exc, torch.OutOfMemoryError):
                    await asyncio.to_thread(self.models.free_device_cache)
                await patiently(delivery.retry, "give the job back", stopping=self._stopping)
        except Stopping:
            jlog.warning("stopping while Redis is away: the job is left for another worker")
        finally:
            self.leases.release(delivery)

    async def _give_up(self, delivery: Delivery, reason: str) -> None:
        job = delivery.job
        JobLog(log, job.id).error("dead-lettered: %s", reason)
        if not delivery.lost.is_set():
            await self.poster.tell(job, await delivery.message(), failure_text(job, reason))
            await patiently(lambda: delivery.give_up(reason), "dead-letter",
                            stopping=self._stopping)
        self.leases.release(delivery)

    # --- steps' helpers ---------------------------------------------------------------------

    async def _source_image(self, job: Job) -> Image | None:
        """The image an upscale or a variation starts from; None for text to image."""
        if job.kind is JobKind.GENERATE:
            return None
        return await fetch_source_image(self.client, self.consumer.view, job)

    async def _upscale(self, job: Job, images: list[Image],
                       notes: list[str]) -> tuple[list[Image], str | None]:
        """The images through the configured upscaler when the job asks for it, and the
        upscaler's description. An upscale job without an upscaler is given up; a picture
        asked with `upscale:true` is posted as drawn, with a note."""
        if job.kind is not JobKind.UPSCALE and not job.upscale:
            return images, None
        try:
            return await asyncio.to_thread(upscale_images, self.config, self.upscalers, images)
        except UpscalerUnavailable as exc:
            log.error("upscaler unavailable: %s (%r)", exc, exc.__cause__)
            if job.kind is JobKind.UPSCALE:
                raise
            notes.append(f"not upscaled: {exc}")
            return images, None

    def _progress_editor(self, call: list[Delivery]) -> Callable[[int, int, bytes | None],
                                                                  Awaitable[None]]:
        """Shows "sampling n/N" and the preview on every queued message of the call."""

        async def edit(step: int, total: int, preview: bytes | None) -> None:
            for delivery in call:
                message_id = await delivery.message()
                if message_id is not None:
                    await self.poster.show_progress(delivery.job, message_id, step, total,
                                                    preview)

        return edit

    @contextlib.asynccontextmanager
    async def _watch_cancels(self, call: list[Delivery]) -> AsyncIterator[Cancels]:
        """Events set when someone cancels a running job (`/queue cancel`, the button) or when
        its lease turns out lost; the sampler checks `all` at every step, each job's own event
        after sampling."""
        cancels = Cancels(one={d.job_id: threading.Event() for d in call},
                          all=threading.Event())

        async def watch() -> None:
            while not cancels.all.is_set():
                await asyncio.sleep(CANCEL_POLL_S)
                try:
                    asked = await self.consumer.cancel_requested([d.job_id for d in call])
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

    async def _preload(self) -> None:
        for model_id in self.config.worker.preload:
            try:
                await self.models.get(model_id)
            except ModelLoadError as exc:
                # A broken model must not take the others down with it.
                log.error("model %s failed to load: %s", model_id, exc)
                continue
            if self.config.worker.compile_unet and self.placement.device.type == "cuda":
                await self._warm_up(model_id)

    async def _warm_up(self, model_id: str) -> None:
        """Compile the UNet for the default size before the first user waits for it."""
        dims = self.config.sizes[self.config.defaults.size]
        job = Job(application_id=0, interaction_id=0, guild_id=None, channel_id=0, user_id=0,
                  model_id=model_id, tags="warm-up", prompt="pony", negative_prompt="", seed=0,
                  steps=2, cfg=7.5, sampler=self.config.defaults.sampler, width=dims.width,
                  height=dims.height)
        started = time.perf_counter()
        pipe = await self.models.get(model_id)
        await asyncio.to_thread(sample_batch, pipe, [job])
        log.info("model %s: UNet compiled and warmed up in %.1f s", model_id,
                 time.perf_counter() - started)

    # --- background -------------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await self.publish_heartbeat()
            await asyncio.sleep(HEARTBEAT_S)

    async def _check_files(self) -> None:
        """Which models and upscalers this worker can use (no weights loaded); logged at
        start, re-checked with every beat so a file added later is noticed."""
        first = self.inventory is None
        self.inventory = await asyncio.to_thread(check_all, self.config,
                                                 self.settings.path.parent)
        if first:
            log.info("worker %s: models and upscalers\n%s", self.name, self.inventory.table())

    async def publish_heartbeat(self) -> None:
        await self._check_files()
        assert self.inventory is not None
        beat = WorkerHeartbeat(
            **self.inventory.heartbeat_fields(),  # type: ignore[arg-type]
            load_s=self.models.load_seconds,
            name=self.name, host=socket.gethostname(), device=self.placement.describe(),
            loaded=self.models.loaded, failed=self.models.failures,
            current_job=self.current.job_id if self.current else None,
            jobs_done=self.jobs_done, images_done=self.images_done,
            images_per_s=self.throughput.images_per_s(),
            busy_fraction=self.throughput.busy_fraction(), at=time.time(),
        )  # fmt: skip
        try:
            await publish_heartbeat(self.redis, self.keys, beat, ttl_s=HEARTBEAT_S * 3)
        except Exception as exc:  # Redis blips must not kill the worker.
            log.warning("heartbeat failed: %s", exc)

    async def _tidy(self) -> None:
        """Forget the consumers of workers that are gone (each process is a new consumer)."""
        while True:
            await asyncio.sleep(TIDY_EVERY_S)
            try:
                live = {beat.name for beat in await read_heartbeats(self.redis, self.keys)}
                idle_s = max(DEPARTED_AFTER_S, 10 * self.config.queue.lease_s)
                for name in await self.consumer.forget_departed(live, idle_s=idle_s):
                    log.info("forgot departed worker %s", name)
            except Exception as exc:
                log.warning("tidying the consumer group failed: %s", exc)


async def logged_in_client(token: str) -> discord.Client:
    """A REST-only discord.py client (no gateway): rate limits and retries come with it."""
    client = discord.Client(intents=discord.Intents.none())
    await client.login(token)
    return client

