"""The result message of a job: images fitted under Discord's limit with their parameters,
the text, the embed and the buttons. Shared by the worker and anything else that renders a
job's images the same way (the local `draw`)."""

from __future__ import annotations

from PIL.Image import Image

from inference.fit import fit_images
from inference.png_parameters import a1111_parameters
from inference.sources import SOURCE_PARAMETERS
from inference.upscale import UpscaleError, UpscalerCache
from ponybot_core.config import Config
from ponybot_core.hires import UPSCALER_NAME as HIRES_UPSCALER
from ponybot_core.job import Job, JobKind
from ponybot_core.messages import result_embed, result_text, result_view
from ponybot_core.poster import Attachment, Post


class UpscalerUnavailable(Exception):
    """No upscaler is configured, or it cannot be loaded; `str(error)` tells the user."""


def image_parameters(job: Job, seed: int, model_name: str, upscaled_by: str | None,
                     source_parameters: str | None = None) -> str:
    """The AUTOMATIC1111-style parameters of one image, with what was done after sampling.
    An uploaded picture upscaled (`/upscale`) keeps its own (`source_parameters`), if any."""
    if job.kind is JobKind.UPSCALE and job.source_job_id is None:
        upscaler = f"Postprocess upscaler: {upscaled_by}" if upscaled_by else ""
        return ", ".join(p for p in (source_parameters, upscaler) if p)
    text = a1111_parameters(job, seed, model_name=model_name)
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


def upscale_images(config: Config, upscalers: UpscalerCache, images: list[Image],
                   upscaler_id: str | None = None) -> tuple[list[Image], str]:
    """The images through the configured upscaler `upscaler_id` (None: the default), and its
    description (`Real-ESRGAN x4plus ×4`). Blocking: call it off the event loop."""
    try:
        entry = config.upscaler(upscaler_id)
    except KeyError:
        raise UpscalerUnavailable(f"the upscaler {upscaler_id!r} is not configured" if upscaler_id
                                  else "no upscaler is configured") from None
    try:
        upscaler = upscalers.get(entry)
    except UpscaleError as exc:
        raise UpscalerUnavailable(f"the upscaler {entry.id!r} could not be loaded") from exc
    return ([_with_source_parameters(upscaler.upscale(image), image) for image in images],
            f"{entry.name} ×{upscaler.scale}")


def _with_source_parameters(upscaled: Image, source: Image) -> Image:
    if SOURCE_PARAMETERS in source.info:
        upscaled.info[SOURCE_PARAMETERS] = source.info[SOURCE_PARAMETERS]
    return upscaled


def upscale_for(config: Config, upscalers: UpscalerCache, job: Job, images: list[Image],
                notes: list[str]) -> tuple[list[Image], str | None]:
    """The images through the configured upscaler when the job asks for it, and the
    upscaler's description. An upscale job without one raises UpscalerUnavailable (it is
    given up); a picture asked with `upscale:true` is posted as drawn, with a note."""
    if job.kind is not JobKind.UPSCALE and not job.upscale:
        return images, None
    try:
        return upscale_images(config, upscalers, images, job.upscaler_id)
    except UpscalerUnavailable as exc:
        if job.kind is JobKind.UPSCALE:
            raise
        notes.append(f"not upscaled: {exc}")
        return images, None


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
