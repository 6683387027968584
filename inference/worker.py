"""The inference worker: take jobs from the queue, draw, upscale, post the images, acknowledge.

A job is one of three kinds (`core.job.JobKind`): text to image (`/pony`, 🔁 Re-roll), an
upscale of an earlier image (U buttons) or an img2img variation of one (V buttons). Earlier
images are fetched back from their Discord message (`inference.sources`). Every file is fitted
under Discord's attachment limit (`inference.fit`) and every result carries the buttons.

One worker per GPU. Any number of workers, on any machines that reach Redis, share the queue
through the consumer group; a worker that dies leaves its jobs pending and another one reclaims
them when their lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import discord
from PIL.Image import Image
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.config import Settings
from core.heartbeat import WorkerHeartbeat, publish_heartbeat, remove_heartbeat
from core.job import Job, JobKind
from core.jobqueue import Delivery, JobQueue, JobStatus
from core.keys import Keys
from core.logs import JobLog
from core.messages import cancelled_text, failure_text
from core.poster import Poster, PostFailed
from inference.device import Placement, choose_placement
from inference.fast_path import chunk_by_images, configure_for_size, images_per_call
from inference.inventory import Inventory, check_all
from inference.loading import ModelLoadError
from inference.models import ModelCache
from inference.progress import ProgressReporter, SamplingCancelled
from inference.result_post import UpscalerUnavailable, render_post, upscale_images
from inference.sampling import Sampled, sample_batch
from inference.sources import SourceUnavailable, fetch_source_image
from inference.throughput import Throughput
from inference.upscale import UpscalerCache
from inference.variation import vary

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
CANCEL_POLL_S = 0.5
# How long to wait for the bot to record the queued message before posting a new one instead.
MESSAGE_WAIT_S = 5.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        client: discord.Client,
        *,
        name: str | None = None,
        placement: Placement | None = None,
        models: ModelCache | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.config
        self.redis = redis
        self.keys = Keys(self.config.redis.key_prefix)
        self.queue = JobQueue(redis, self.keys, max_attempts=self.config.queue.max_attempts,
                              result_ttl_s=self.config.queue.result_ttl_s)
        self.client = client
        self.poster = Poster(client)
        self.name = name or os.environ.get("PONYBOT_WORKER_NAME") or \
            f"{socket.gethostname()}-{os.getpid()}"
        self.placement = placement or choose_placement(self.config.worker.device,
                                                       self.config.worker.dtype)
        self.models = models or ModelCache(
            self.config, base_dir=settings.path.parent, placement=self.placement
        )
        self.upscalers = UpscalerCache(base_dir=settings.path.parent,
                                       device=self.placement.device, dtype=self.placement.dtype)
        self.jobs_done = 0
        self.throughput = Throughput()
        self.images_done = 0
        self.current: Delivery | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.inventory: Inventory | None = None

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self._check_files()
        await self.queue.ensure_group()
        for model_id in self.config.worker.preload:
            await self._preload(model_id)
            if self.config.worker.compile_unet and self.placement.device.type == "cuda" \
                    and model_id in self.models.loaded:
                await self._warm_up(model_id)
        log.info("worker %s ready on %s", self.name, self.placement.describe())
        async with self._heartbeat():
            while not self._stopping.is_set():
                try:
                    deliveries = await self.next_jobs()
                except (RedisError, OSError) as exc:
                    # Redis restarting or unreachable: wait and carry on; pending jobs stay
                    # pending in Redis and are picked up again when it is back.
                    log.warning("queue unavailable (%s); retrying in 1 s", exc)
                    await asyncio.sleep(1.0)
                    continue
                if deliveries:
                    await self.process_batch(deliveries)
            await self.drain()

    def stop(self) -> None:
        self._stopping.set()

    async def next_jobs(self) -> list[Delivery]:
        """Jobs whose worker died come first: they have waited longest."""
        worker = self.config.worker
        reclaimed = await self.queue.reclaim(
            self.name, min_idle_s=self.config.queue.lease_s, count=worker.max_batch
        )
        if reclaimed:
            return reclaimed
        return await self.queue.take(
            self.name, count=worker.max_batch, block_s=worker.block_ms / 1000,
            preferred_models=self.models.loaded,
            max_preference_wait_s=worker.max_preference_wait_s,
        )  # fmt: skip

    async def process_batch(self, deliveries: list[Delivery]) -> None:
        """Draw the jobs taken together (one pipeline call for compatible text-to-image jobs),
        then finish them — upscale, encode, post, ack — while the next batch samples."""
        live = [d for d in deliveries if await self._still_to_do(d)]
        compatible: dict[str, list[Delivery]] = {}
        for delivery in live:  # reclaimed jobs need not be compatible with each other
            compatible.setdefault(delivery.job.batch_key(), []).append(delivery)
        groups = []
        for jobs in compatible.values():
            first = jobs[0].job
            cap = images_per_call(self.placement, first.width, first.height, self.config.worker)
            for indices in chunk_by_images([d.job.count for d in jobs], cap):
                groups.append([jobs[i] for i in indices])
        for group in groups:
            lease = asyncio.create_task(self._renew_leases(group))
            try:
                drawn = await self._draw_group(group)
            except BaseException:
                lease.cancel()
                raise
            if drawn is None:
                lease.cancel()
                continue
            # Overlap: one group finishes while the next one samples; never more than one
            # waits, so a slow Discord holds the sampler back instead of piling up results.
            await self.drain()
            self._finishing = asyncio.create_task(self._finish_group(group, drawn, lease))

    async def drain(self) -> None:
        """Wait for the group being finished, if any."""
        if self._finishing is not None:
            await self._finishing
            self._finishing = None

    async def _still_to_do(self, delivery: Delivery) -> bool:
        # 1. A job reclaimed after its post only needs its ack.
        if delivery.already_posted:
            JobLog(log, delivery.job.id).info("already posted; acknowledging")
            await self.queue.ack(delivery)
            return False
        # 2. A job that keeps failing (or killing its workers) stops here.
        if delivery.attempts > self.config.queue.max_attempts:
            await self.give_up(delivery, f"it failed {delivery.attempts - 1} times")
            return False
        return True

    async def _draw_group(self, group: list[Delivery]) -> Drawn | None:
        """Steps 3-5 for jobs that share one pipeline call; None when they all ended here
        (cancelled or failed, each already handled)."""
        first = group[0].job
        for d in group:
            JobLog(log, d.job.id).info(
                "start %s attempt=%d model=%s steps=%d count=%d size=%dx%d batch=%d",
                d.job.kind.value, d.attempts, d.job.model_id, d.job.steps, d.job.count,
                d.job.width, d.job.height, len(group))
        self.current = group[0]
        started = time.perf_counter()
        try:
            async with self._cancellation(group) as cancels:
                # 3. The earlier image a U or V button starts from, fetched back from Discord.
                source = await self._source_image(first)
                fetched = time.perf_counter()
                # 4. Load the model (cached after the first job); an upscale needs none.
                pipe = None if first.kind is JobKind.UPSCALE else \
                    await self.models.get(first.model_id)
                loaded = time.perf_counter()
                # 5. Draw, off the event loop so heartbeats, leases and progress edits flow;
                #    the sampler stops early only when every job of the call is cancelled.
                reporter = ProgressReporter(
                    self._progress_editor(group), interval_s=self.config.worker.progress_interval_s,
                    enabled=self.config.worker.progress and pipe is not None,
                    cancel=cancels.all, logger=JobLog(log, first.id))
                async with reporter:
                    results = await asyncio.to_thread(self._draw, pipe, [d.job for d in group],
                                                      source, reporter.pipeline_kwargs())
                sampled = time.perf_counter()
        except SamplingCancelled:
            for delivery in group:
                await self._cancelled(delivery)
            return None
        except Exception as exc:
            for delivery in group:
                await self._failed(delivery, exc)
            return None
        finally:
            self.current = None
        if pipe is not None:
            self.throughput.record(sampled - loaded, sum(d.job.count for d in group))
        return Drawn(results=results, cancelled=[cancels.one[d.job.id].is_set() for d in group],
                     timings={"fetch": fetched - started, "load": loaded - fetched,
                              "sample": sampled - loaded}, started=started)

    async def _finish_group(self, group: list[Delivery], drawn: Drawn,
                            lease: asyncio.Task[None]) -> None:
        try:
            for delivery, result, cancelled in zip(group, drawn.results, drawn.cancelled,
                                                   strict=True):
                if cancelled or await self.queue.cancel_requested(delivery.job.id):
                    await self._cancelled(delivery)
                    continue
                try:
                    await self._finish(delivery, result, drawn)
                except Exception as exc:
                    await self._failed(delivery, exc)
        finally:
            lease.cancel()

    async def _finish(self, delivery: Delivery, drawn: Sampled, batch: Drawn) -> None:
        job = delivery.job
        finishing = time.perf_counter()
        notes = [drawn.note] if drawn.note else []
        # 6. Upscale: the U buttons, and `/pony upscale:true`.
        images, upscaled_by = await self._upscale(job, drawn.images, notes)
        upscaled = time.perf_counter()
        # 7. Encode, every file fitted under Discord's attachment limit.
        post = await asyncio.to_thread(
            render_post, self.config, job, images,
            elapsed_s=batch.timings["sample"] + upscaled - finishing, notes=notes,
            upscaled_by=upscaled_by)
        encoded = time.perf_counter()
        # 8. Post, then record it before the ack: a reclaim never posts twice.
        await self.queue.mark_posting(job.id)
        message_id = await self.poster.deliver(job, await self._message_id(delivery), post)
        posted = time.perf_counter()
        await self.queue.mark_posted(job.id, message_id, {
            **batch.timings,
            "upscale": upscaled - finishing,
            "encode": encoded - upscaled,
            "post": posted - encoded,
        })  # fmt: skip
        await self.queue.ack(delivery, worker_seconds=posted - batch.started)
        self.jobs_done += 1
        self.images_done += len(images)
        JobLog(log, job.id).info("posted message=%s sample=%.2fs upscale=%.2fs total=%.2fs",
                                 message_id, batch.timings["sample"], upscaled - finishing,
                                 posted - batch.started)

    async def _cancelled(self, delivery: Delivery) -> None:
        job = delivery.job
        JobLog(log, job.id).info("cancelled while running")
        await self.poster.tell(job, await self._message_id(delivery), cancelled_text(job))
        await self.queue.ack(delivery, status=JobStatus.CANCELLED)

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        """A job that failed: given up when retrying cannot help, else back to the queue."""
        job = delivery.job
        jlog = JobLog(log, job.id)
        if isinstance(exc, ModelLoadError):
            jlog.error("model failed to load: %s", exc)
            await self.give_up(delivery, f"the model {job.model_id!r} could not be loaded")
        elif isinstance(exc, SourceUnavailable | UpscalerUnavailable):
            await self.give_up(delivery, str(exc))
        elif isinstance(exc, PostFailed) and exc.permanent:
            jlog.error("post refused for good: %s", exc)
            await self.give_up(delivery, "Discord refused the result")
        else:
            jlog.warning("failed on attempt %d, will retry: %r", delivery.attempts, exc,
                         exc_info=not isinstance(exc, PostFailed))
            await self.queue.release(self.name, delivery)

    async def give_up(self, delivery: Delivery, reason: str) -> None:
        job = delivery.job
        JobLog(log, job.id).error("dead-lettered: %s", reason)
        await self.poster.tell(job, await self._message_id(delivery), failure_text(job, reason))
        await self.queue.dead_letter(delivery, reason)

    # --- steps ------------------------------------------------------------------------------

    async def _source_image(self, job: Job) -> Image | None:
        """The image an upscale or a variation starts from; None for text to image."""
        if job.kind is JobKind.GENERATE:
            return None
        return await fetch_source_image(self.client, self.queue, job)

    def _draw(self, pipe: Any, jobs: list[Job], source: Image | None,
              pipeline_kwargs: dict[str, Any]) -> list[Sampled]:
        """The jobs' images before upscaling (runs in a thread)."""
        job = jobs[0]
        if pipe is not None:
            configure_for_size(pipe, job.width, job.height, self.config.worker)
        if job.kind is JobKind.GENERATE:
            return sample_batch(pipe, jobs, **pipeline_kwargs)
        assert source is not None and len(jobs) == 1
        if job.kind is JobKind.VARIATION:
            return [vary(pipe, job, source, **pipeline_kwargs)]
        # An upscale starts from the source as it is.
        return [Sampled(images=[source], tokens=0, negative_tokens=0, chunks=1, note=None)]

    def _progress_editor(self, group: list[Delivery]) -> Callable[[int, int, bytes | None],
                                                                   Awaitable[None]]:
        """Shows "sampling n/N" and the preview on every queued message of the call."""

        async def edit(step: int, total: int, preview: bytes | None) -> None:
            for delivery in group:
                message_id = await self._message_id(delivery)
                if message_id is not None:
                    await self.poster.show_progress(delivery.job, message_id, step, total,
                                                    preview)

        return edit

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
            if job.kind is JobKind.UPSCALE:
                raise
            notes.append(f"not upscaled: {exc}")
            return images, None

    async def _message_id(self, delivery: Delivery) -> int | None:
        """The queued message's id; the bot records it right after answering, which can be
        a moment after a fast worker picked the job up."""
        if delivery.message_id is not None:
            return delivery.message_id
        deadline = delivery.job.created_at + MESSAGE_WAIT_S
        while True:
            recorded = (await self.queue.status(delivery.job.id)).get("message_id")
            if recorded:
                return int(recorded)
            if time.time() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def _warm_up(self, model_id: str) -> None:
        """Compile the UNet for the default size before the first user waits for it."""
        dims = self.config.sizes[self.config.defaults.size]
        job = Job(application_id=0, interaction_id=0, interaction_token="", guild_id=None,
                  channel_id=0, user_id=0, model_id=model_id, tags="warm-up", prompt="pony",
                  negative_prompt="", seed=0, steps=2, cfg=7.5,
                  sampler=self.config.defaults.sampler, width=dims.width, height=dims.height)
        started = time.perf_counter()
        pipe = await self.models.get(model_id)
        await asyncio.to_thread(sample_batch, pipe, [job])
        log.info("model %s: UNet compiled and warmed up in %.1f s", model_id,
                 time.perf_counter() - started)

    async def _preload(self, model_id: str) -> None:
        try:
            await self.models.get(model_id)
        except ModelLoadError as exc:
            # A broken model must not take the others down with it.
            log.error("model %s failed to load: %s", model_id, exc)

    async def _renew_leases(self, group: list[Delivery]) -> None:
        """Renew the jobs' lease until they are finished, so long jobs are not reclaimed."""
        entry_ids = [d.entry_id for d in group]
        while True:
            await asyncio.sleep(self.config.queue.lease_s / 3)
            with contextlib.suppress(RedisError, OSError):
                await self.queue.renew(self.name, entry_ids)

    @contextlib.asynccontextmanager
    async def _cancellation(self, group: list[Delivery]) -> AsyncIterator[Cancels]:
        """Events set when someone cancels a running job (`/queue cancel`, the button); the
        sampler checks `all` at every step, each job's own event after sampling."""
        cancels = Cancels(one={d.job.id: threading.Event() for d in group},
                          all=threading.Event())

        async def watch() -> None:
            while not cancels.all.is_set():
                await asyncio.sleep(CANCEL_POLL_S)
                with contextlib.suppress(RedisError, OSError):
                    for job_id, event in cancels.one.items():
                        if not event.is_set() and await self.queue.cancel_requested(job_id):
                            event.set()
                if all(e.is_set() for e in cancels.one.values()):
                    cancels.all.set()

        async with _background(watch()):
            yield cancels

    @contextlib.asynccontextmanager
    async def _heartbeat(self) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await self.publish_heartbeat()
                await asyncio.sleep(HEARTBEAT_S)

        try:
            async with _background(beat()):
                yield
        finally:
            with contextlib.suppress(Exception):
                await remove_heartbeat(self.redis, self.keys, self.name)

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
            name=self.name,
            host=socket.gethostname(),
            device=self.placement.describe(),
            loaded=self.models.loaded,
            failed=self.models.failures,
            current_job=self.current.job.id if self.current else None,
            jobs_done=self.jobs_done,
            images_done=self.images_done,
            images_per_s=self.throughput.images_per_s(),
            busy_fraction=self.throughput.busy_fraction(),
            at=time.time(),
        )
        try:
            await publish_heartbeat(self.redis, self.keys, beat, ttl_s=HEARTBEAT_S * 3)
        except Exception as exc:  # Redis blips must not kill the worker.
            log.warning("heartbeat failed: %s", exc)


async def logged_in_client(token: str) -> discord.Client:
    """A REST-only discord.py client (no gateway): rate limits and retries come with it."""
    client = discord.Client(intents=discord.Intents.none())
    await client.login(token)
    return client


@dataclass(frozen=True)
class Cancels:
    one: dict[str, threading.Event]  # job id -> cancelled
    all: threading.Event  # every job of the pipeline call is cancelled: stop sampling


@dataclass
class Drawn:
    """A group's images, waiting to be finished."""

    results: list[Sampled]
    cancelled: list[bool]
    timings: dict[str, float]
    started: float


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `coro` while the block runs; cancel it after."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
