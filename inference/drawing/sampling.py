"""Sampling one job's images with its own seeded generators, on SD 1.x, SD 2.x and SDXL.

The prompts are encoded here (`drawing.prompt_embeds`), not by the pipeline, so prompts longer
than CLIP's 75 tokens are used whole (in chunks) instead of being cut, unless the model's
captions were cut (`caption.long_prompts = "truncate"`); each job's `Sampled` says how long its
prompt was so the worker can tell the user.

SDXL is conditioned on its size and crop too ("micro-conditioning"): the picture's own size as
both `original_size` and `target_size`, and crop `(0, 0)`, what A1111 passes for text to image
(`modules/sd_models_xl.py`: `original_size_as_tuple` and `target_size_as_tuple` = `[height,
width]`, `crop_coords_top_left` = its `sdxl_crop_top/left` options, 0 by default) and what
diffusers defaults to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL.Image import Image

from inference.drawing.prompt_embeds import (
    AnyPipeline,
    TextOptions,
    concatenated,
    encode_prompts,
    is_xl,
)
from inference.drawing.schedulers import set_scheduler
from ponybot_core.config import ModelEntry
from ponybot_core.job import Job


@dataclass(frozen=True)
class Sampled:
    images: list[Image]
    # Prompt tokens (without BOS/EOS) and negative prompt tokens, as encoded.
    tokens: int
    negative_tokens: int
    # 75-token chunks the prompts were encoded in (1 = it fit in CLIP's window).
    chunks: int
    # "prompt is 112 tokens: encoded in 2 chunks of 75", or None when it fit in one.
    note: str | None


def generators(job: Job) -> list[torch.Generator]:
    # CPU generators: the initial noise, and so the picture, is the same on every device.
    return [torch.Generator("cpu").manual_seed(seed) for seed in job.image_seeds()]


def size_conditioning(pipe: AnyPipeline, width: int, height: int) -> dict[str, Any]:
    """SDXL's micro-conditioning for a picture of this size (nothing for SD 1.x/2.x)."""
    if not is_xl(pipe):
        return {}
    return {"original_size": (height, width), "target_size": (height, width),
            "crops_coords_top_left": (0, 0)}


@torch.inference_mode()
def sample_batch(
    pipe: AnyPipeline, jobs: Sequence[Job], *, model: ModelEntry | None = None,
    **pipeline_kwargs: Any
) -> list[Sampled]:
    """Draw every job's images in as few pipeline calls as possible, one per group of jobs
    whose prompts encoded to the same length (all of them, unless a prompt is long).

    The jobs must share model, size, steps, sampler and cfg (`Job.batch_key`). Each image has
    its own generator, so each job gets the images its seeds give; batched, an image can
    differ from the same job run alone by ±1/255 in a few pixels (floating-point reduction
    order), which is why jobs with a user-chosen seed are never batched.
    `model` is the jobs' config entry (CLIP skip, long prompts, prediction type; None = the
    defaults). `pipeline_kwargs` go to the diffusers call as they are (the progress/cancel
    callback).
    """
    first = jobs[0]
    assert len({j.batch_key() for j in jobs}) == 1, "sample_batch needs compatible jobs"
    # 1. A fresh scheduler for the jobs' sampler, on the model's noise schedule.
    set_scheduler(pipe, first.sampler, prediction=model.prediction if model else None)
    # 2. Encode each job's prompts, already repeated once per image.
    options = TextOptions.of(model)
    encoded = [encode_prompts(pipe, j.prompt, j.negative_prompt, j.count, options=options)
               for j in jobs]
    # 3. One call per prompt length: embeddings of different lengths cannot share a batch.
    images: dict[int, list[Image]] = {}
    for length in sorted({e.prompt_embeds.shape[1] for e in encoded}):
        group = [i for i, e in enumerate(encoded) if e.prompt_embeds.shape[1] == length]
        result = pipe(
            **concatenated([encoded[i] for i in group]),
            num_images_per_prompt=1,
            generator=[g for i in group for g in generators(jobs[i])],
            num_inference_steps=first.steps,
            guidance_scale=first.cfg,
            width=first.width,
            height=first.height,
            output_type="pil",
            **size_conditioning(pipe, first.width, first.height),
            **pipeline_kwargs,
        )
        # 4. Hand each job its own images, in order.
        produced = iter(result.images)
        for i in group:
            images[i] = [next(produced) for _ in range(jobs[i].count)]
    return [
        Sampled(images=images[i], tokens=e.tokens, negative_tokens=e.negative_tokens,
                chunks=e.chunks, note=e.note())
        for i, e in enumerate(encoded)
    ]
