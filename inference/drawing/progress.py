"""Live progress while a job samples: step counts and cheap previews for the queued message,
and cancellation of a running job.

Sampling runs in a thread (`asyncio.to_thread(sample, ...)`) while the worker's event loop keeps
serving heartbeats and leases. A `ProgressReporter` joins the two:

* its `on_step_end` is diffusers' `callback_on_step_end`: it runs in the sampling thread after
  every denoising step, records the step, and when an edit is due hands a copy of the first
  image's latents to the event loop (`loop.call_soon_threadsafe`). It never waits on I/O and
  never decodes anything itself: the per-step cost is a clock read and a lock;
* on the event loop, the handed-over latents are projected to a small JPEG
  (`latents_to_preview`, in a pool thread) and passed to the `edit` coroutine the worker gave;
* setting `reporter.cancel` (a `threading.Event`, from any thread) stops sampling at the end of
  the current step: the callback raises `SamplingCancelled`, which leaves the pipeline call
  without decoding the unfinished latents, so the worker tells "cancelled" from a crash by the
  exception's type.

Why raise rather than diffusers' `pipe._interrupt = True`: SD pipelines honour `_interrupt` by
skipping the remaining steps and then still VAE-decode the half-denoised latents and return them
as if the job had succeeded (and `__call__` resets the flag when it starts, so it cannot be set
early). An exception stops at once, skips the decode and cannot be mistaken for a result.

Throttling (Discord): edits of the queued message go to the interaction webhook
(`PATCH /webhooks/{application_id}/{token}/messages/{id}`). Discord does not publish that route's
limit and asks apps not to hard-code limits (docs.discord.com/developers/topics/rate-limits:
per-route limits are counted per top-level resource, and for webhooks that is webhook id +
token, i.e. one bucket per interaction here; the global 50 requests/s per bot does not apply to
interaction endpoints, per Discord's developer support article "My Bot is Being Rate Limited").
discord.py reads the rate-limit headers and waits out a 429 by itself. What we rely on is only
this: at most one edit per message per `interval_s` (>= 1 s, 3 s by default), an edit starts
only if the previous one has finished (a slow or rate-limited edit makes later ones be skipped,
never queued), and none starts after the reporter is closed, so a progress edit can never land
after (and overwrite) the final result.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from inference.drawing.prompt_embeds import is_xl

log = logging.getLogger(__name__)

# `edit(step, total, preview)`: show "sampling step/total" and, when given, the preview JPEG.
EditFn = Callable[[int, int, bytes | None], Awaitable[None]]

MIN_INTERVAL_S = 1.0
# Long side of a preview in pixels (never more than the image itself): 256 px shows the
# composition in Discord's inline view and stays around 10 KB as a JPEG.
PREVIEW_MAX_SIDE = 256
PREVIEW_JPEG_QUALITY = 80
PREVIEW_FILENAME = "progress.jpg"
# After this many failed edits in a row (token expired, message deleted) stop editing this job.
MAX_EDIT_FAILURES = 3

# SD 1.x latents -> RGB: the linear approximation AUTOMATIC1111's "Approx cheap" and ComfyUI's
# latent2rgb previews use (ComfyUI comfy/latent_formats.py, class SD15). Rows are the four
# latent channels, columns R, G, B; it applies to the scaled latents the UNet sees (VAE
# latents x 0.18215), which is what diffusers' callback receives; output is in [-1, 1].
# SD 2.x has the same VAE and uses the same factors (ComfyUI comfy/supported_models.py: SD20's
# latent_format is SD15).
LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
# SDXL's own VAE (latents x 0.13025): ComfyUI comfy/latent_formats.py, class SDXL
# (`scale_factor = 0.13025`, `latent_rgb_factors`, `latent_rgb_factors_bias`), applied the way
# its Latent2RGBPreviewer does (`linear(x, factors, bias)`, then [-1, 1] -> [0, 1]).
SDXL_LATENT_RGB_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


@dataclass(frozen=True)
class LatentFormat:
    """How one VAE family's latents look as colours, without the VAE."""

    name: str
    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


SD1_LATENTS = LatentFormat("SD 1.x/2.x", LATENT_RGB_FACTORS)
SDXL_LATENTS = LatentFormat("SDXL", SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS)


def latent_format_of(pipe: Any) -> LatentFormat:
    """The latent colours of the pipeline sampling (SDXL's VAE differs from SD 1.x/2.x's)."""
    return SDXL_LATENTS if is_xl(pipe) else SD1_LATENTS


_VAE_SCALE = 8


class SamplingCancelled(Exception):
    """Raised out of the pipeline call when the job's cancel event was set; `step` steps of
    `total` had run."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"sampling cancelled after step {step}/{total}")
        self.step = step
        self.total = total


# ---------------------------------------------------------------------------------------------
# Previews.


def preview_size(latent_height: int, latent_width: int,
                 max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the preview for latents of this size: the image's aspect, the long
    side `max_side` px or the image's own size when that is smaller."""
    height, width = latent_height * _VAE_SCALE, latent_width * _VAE_SCALE
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


@torch.no_grad()
def latents_to_preview(latents: torch.Tensor, *, max_side: int = PREVIEW_MAX_SIDE,
                       latent_format: LatentFormat = SD1_LATENTS) -> Image.Image:
    """The first image of a batch of SD 1.x latents, or `latent_format`'s (`(B, 4, h, w)` or
    `(4, h, w)`, any device or dtype), as an RGB picture of `preview_size(h, w)`, without the VAE.

    Early latents are mostly noise with a large spread (Euler's start at sigma ~ 15): they are
    divided by their standard deviation when it is above 1, so the picture is noise rather
    than saturated colours; clean SD latents have a spread of about 1 and are left as they are.
    """
    first = latents[0] if latents.ndim == 4 else latents
    if first.ndim != 3 or first.shape[0] != len(latent_format.factors):
        raise ValueError(f"latents: expected (B, 4, h, w) or (4, h, w), got {tuple(latents.shape)}")
    first = first.float()
    first = first / first.std().clamp(min=1.0)
    channels, height, width = first.shape
    factors = torch.tensor(latent_format.factors, dtype=first.dtype, device=first.device)
    bias = torch.tensor(latent_format.bias, dtype=first.dtype, device=first.device)
    rgb = (factors.T @ first.reshape(channels, -1) + bias[:, None]).reshape(3, height, width)
    # One plain matmul and a truncation (+0.5 rounds): einsum and round() are 10x slower here.
    pixels = ((rgb + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    image = Image.fromarray(pixels.cpu().numpy(), "RGB")
    size = preview_size(height, width, max_side)
    return image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image


def jpeg_of(image: Image.Image) -> bytes:
    """JPEG bytes for a Discord attachment (`PREVIEW_FILENAME`)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return buffer.getvalue()


def preview_jpeg(latents: torch.Tensor, latent_format: LatentFormat = SD1_LATENTS) -> bytes:
    return jpeg_of(latents_to_preview(latents, latent_format=latent_format))


# ---------------------------------------------------------------------------------------------
# The reporter.


class ProgressReporter:
    """One per job. Use as `async with reporter:` around the sampling call, and pass
    `**reporter.pipeline_kwargs()` to the pipeline (or `reporter.on_step_end` as
    `callback_on_step_end` with `["latents"]` as its tensor inputs).

    - `edit`: coroutine `edit(step, total, preview_jpeg | None)`; its exceptions are logged and
      do not stop sampling. Not called at all when `enabled` is false (`config.worker.progress`);
      the callback then only checks for cancellation.
    - `interval_s`: the least time between the starts of two edits (`progress_interval_s`).
      The first edit is due `interval_s` after the reporter starts, so a job that samples
      faster than that gets no progress edit at all, only its result.
    - `previews`: attach a preview to edits (else `edit` gets None). The worker turns them off
      for a job whose pictures are checked (inference/safety): a preview is the picture being
      drawn, and it never passes the classifier.
    - `cancel`: the event that stops sampling (a new one when not given).
    - `clock`: monotonic seconds; injectable so tests drive the throttle without sleeping.
    """

    def __init__(
        self,
        edit: EditFn,
        *,
        interval_s: float,
        enabled: bool = True,
        previews: bool = True,
        cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        drain_timeout_s: float = 10.0,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
    ) -> None:
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(f"interval_s must be at least {MIN_INTERVAL_S} s, got {interval_s}")
        self.interval_s = interval_s
        self.enabled = enabled
        self.previews = previews
        self.cancel = cancel if cancel is not None else threading.Event()
        self._edit = edit
        self._clock = clock
        self._drain_timeout_s = drain_timeout_s
        self._log = logger

        # Shared with the sampling thread, under `_lock`.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._in_flight = False  # from hand-over until the edit has finished
        self._last_edit_at = 0.0
        self.step = 0
        self.total = 0

        # Event loop side only.
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.edits = 0  # edits that completed
        self.skipped = 0  # steps at which an edit was due but the previous one was in flight

    @property
    def busy(self) -> bool:
        """An edit has been handed over and has not finished yet."""
        with self._lock:
            return self._in_flight

    # --- the sampling thread --------------------------------------------------------------

    def pipeline_kwargs(self) -> dict[str, Any]:
        """What to add to the diffusers pipeline call."""
        return {
            "callback_on_step_end": self.on_step_end,
            "callback_on_step_end_tensor_inputs": ["latents"],
        }

    def on_step_end(self, pipe: Any, step: int, timestep: Any,
                    callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """diffusers' `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`;
        returns no tensor to replace."""
        done = step + 1
        total = getattr(pipe, "num_timesteps", None) or done
        if self.cancel.is_set():
            raise SamplingCancelled(done, total)
        if not self.enabled:
            return {}
        now = self._clock()
        with self._lock:
            self.step, self.total = done, total
            if self._loop is None or self._closed:
                return {}
            if now - self._last_edit_at < self.interval_s:
                return {}
            if self._in_flight:
                self.skipped += 1
                return {}
            self._in_flight = True
            self._last_edit_at = now
            latents = callback_kwargs.get("latents") if self.previews else None
            # A copy of the first image only: the pipeline goes on with its own tensor. On a
            # GPU this is queued like any kernel; nothing here waits for the device.
            snapshot = latents[:1].detach().clone() if latents is not None else None
            # Under the lock, so `__aexit__` sees either no hand-over or one already queued.
            self._loop.call_soon_threadsafe(self._start_edit, done, total, snapshot,
                                            latent_format_of(pipe))
        return {}

    # --- the event loop -------------------------------------------------------------------

    async def __aenter__(self) -> ProgressReporter:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._last_edit_at = self._clock()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            # The worker stopped waiting (cancelled, or it failed): stop the thread too.
            self.cancel.set()
        with self._lock:
            self._closed = True
            handed_over = self._in_flight
        if handed_over and self._task is None:
            # Its `_start_edit` is already in the loop's ready queue: let it run (and skip).
            await asyncio.sleep(0)
        task = self._task
        if task is not None and not task.done():
            # Let the last edit finish so it cannot land after the result.
            done, _pending = await asyncio.wait({task}, timeout=self._drain_timeout_s)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _start_edit(self, step: int, total: int, latents: torch.Tensor | None,
                    latent_format: LatentFormat = SD1_LATENTS) -> None:
        if self._closed:
            with self._lock:
                self._in_flight = False
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run_edit(step, total, latents, latent_format))

    async def _run_edit(self, step: int, total: int, latents: torch.Tensor | None,
                        latent_format: LatentFormat = SD1_LATENTS) -> None:
        try:
            preview = None
            if latents is not None:
                # In a pool thread: on a GPU, reading the copy back waits for the device.
                preview = await asyncio.to_thread(preview_jpeg, latents, latent_format)
            await self._edit(step, total, preview)
        except Exception as exc:
            self._failures += 1
            self._log.warning("progress edit at step %d/%d failed (%d in a row): %s",
                              step, total, self._failures, exc)
            if self._failures >= MAX_EDIT_FAILURES:
                self._log.warning("progress edits stopped for this job")
                self.enabled = False
        else:
            self._failures = 0
            self.edits += 1
        finally:
            with self._lock:
                self._in_flight = False
