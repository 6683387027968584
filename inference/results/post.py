"""The result message of a job (step 9 of `Worker.process`), and the queued message's progress
edits before it.

The message: images fitted under Discord's limits with their parameters (`fit`), the text, the
embed and the buttons; shared by the worker and anything else that renders a job's images the
same way (the local `draw`). Posted into the queued message, fitted again smaller when Discord
calls it too large: a job never fails for size. While the job samples, the same message shows
"sampling n/N" and a preview."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from PIL.Image import Image

from inference.results.fit import fit_images
from inference.results.sources import SOURCE_PARAMETERS
from ponybot_core.config import Config
from ponybot_core.hires_plan import UPSCALER_NAME as HIRES_UPSCALER
from ponybot_core.image_parameters import format_parameters
from ponybot_core.job import Job, JobKind
from ponybot_core.logs import JobLog
from ponybot_core.messages import result_embed, result_text, result_view
from ponybot_core.poster import Attachment, Post, Poster, PostFailed
from ponybot_core.queue import Delivery

log = logging.getLogger(__name__)

# A message Discord calls too large is fitted to half its size, at most this many times.
SMALLER_POSTS = 4


async def post_result(poster: Poster, config: Config, delivery: Delivery, images: list[Image],
                      notes: Sequence[str], upscaled_by: str | None, *,
                      elapsed_s: float) -> tuple[int, float]:
    """(message id, seconds spent encoding). Every file and the whole message are fitted
    under Discord's limits; a 413 refits at half the size: a job never fails for size."""
    job = delivery.job
    budget = files_budget(config)
    encode_s = 0.0
    for attempt in range(SMALLER_POSTS + 1):
        started = time.perf_counter()
        post: Post = await asyncio.to_thread(
            render_post, config, job, images, elapsed_s=elapsed_s, notes=list(notes),
            upscaled_by=upscaled_by, total_limit=budget)
        encode_s += time.perf_counter() - started
        try:
            return await poster.post(job, await delivery.message(), post), encode_s
        except PostFailed as exc:
            if not exc.too_large or attempt == SMALLER_POSTS:
                raise
            budget = sum(len(a.data) for a in post.attachments) // 2
            JobLog(log, job.id).warning("Discord: message too large; refitting to %d bytes",
                                        budget)
    raise AssertionError("unreachable")


def progress_editor(poster: Poster, call: Sequence[Delivery]
                    ) -> Callable[[int, int, bytes | None], Awaitable[None]]:
    """Shows "sampling n/N" and the preview on every queued message of a pipeline call."""

    async def edit(step: int, total: int, preview: bytes | None) -> None:
        for delivery in call:
            message_id = await delivery.message()
            if message_id is not None:
                await poster.show_progress(delivery.job, message_id, step, total, preview)

    return edit


def image_parameters(job: Job, seed: int, model_name: str, upscaled_by: str | None,
                     source_parameters: str | None = None) -> str:
    """The AUTOMATIC1111-style parameters of one image, with what was done after sampling.
    An uploaded picture upscaled (`/upscale`) keeps its own (`source_parameters`), if any."""
    if job.kind is JobKind.UPSCALE and job.source_job_id is None:
        upscaler = f"Postprocess upscaler: {upscaled_by}" if upscaled_by else ""
        return ", ".join(p for p in (source_parameters, upscaler) if p)
    text = format_parameters(job, seed, model_name=model_name)
    if job.kind is JobKind.VARIATION:
        text += f", Denoising strength: {job.strength:g}"
    if job.hires is not None:  # as A1111 writes its hires fix; `Size` is the first pass's
        h = job.hires
        text += (f", Denoising strength: {h.strength:g}, Hires upscale: {h.scale(job.width):g}, "
                 f"Hires resize: {h.width}x{h.height}, Hires steps: {h.steps}, "
                 f"Hires upscaler: {HIRES_UPSCALER}")
    if upscaled_by:
        text += f", Postprocess upscaler: {upscaled_by}"
    return text


def attachment_limit(config: Config, job: Job) -> int:
    """Bytes one file may have: the smaller of the configured limit and what Discord said with
    the interaction."""
    limit = config.worker.attachment_limit_bytes
    return min(limit, job.attachment_limit) if job.attachment_limit else limit


# Room left in a message request for its JSON and the multipart framing around the files.
_REQUEST_OVERHEAD_BYTES = 256 * 1024


def files_budget(config: Config) -> int:
    """Bytes all the files of one message may have together."""
    return config.worker.message_limit_bytes - _REQUEST_OVERHEAD_BYTES


def fitted_attachments(config: Config, job: Job, images: list[Image], notes: list[str],
                       upscaled_by: str | None, *,
                       total_limit: int | None = None) -> list[Attachment]:
    """Each image a PNG with its parameters, or smaller (WebP, then downscaled) where the PNG
    would not fit Discord's limit per file, or the files together the limit per message
    (`total_limit`, default `files_budget`); `notes` then say so."""
    model_name = config.model(job.model_id).name
    seeds = job.image_seeds()
    fitted_all = fit_images(
        [(image, image_parameters(job, seed, model_name, upscaled_by,
                                  image.info.get(SOURCE_PARAMETERS)))
         for image, seed in zip(images, seeds, strict=True)],
        limit_bytes=attachment_limit(config, job),
        total_limit_bytes=files_budget(config) if total_limit is None else total_limit)
    attachments = []
    for number, (fitted, seed) in enumerate(zip(fitted_all, seeds, strict=True), 1):
        stem = f"pony_{job.id}_{seed}" + ("_upscaled" if upscaled_by else "")
        attachments.append(Attachment(filename=fitted.filename(stem), data=fitted.data))
        if fitted.note:
            notes.append(fitted.note if len(images) == 1 else f"image {number}: {fitted.note}")
    return attachments


def render_post(config: Config, job: Job, images: list[Image], *, elapsed_s: float,
                notes: list[str], upscaled_by: str | None,
                total_limit: int | None = None) -> Post:
    """The result message that replaces the queued one. Blocking (encoding): call it off the
    event loop."""
    attachments = fitted_attachments(config, job, images, notes, upscaled_by,
                                     total_limit=total_limit)
    return Post(
        content=result_text(job, elapsed_s=elapsed_s, notes=notes),
        embed=result_embed(job, model_name=config.model(job.model_id).name,
                           upscaled_by=upscaled_by),
        attachments=attachments,
        # 🔁 U V 🗑: the bot answers the clicks (cogs/results.py).
        view=result_view(job, can_upscale=bool(config.upscalers)),
    )
