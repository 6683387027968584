"""Sampling one job's images with its own seeded generators.

The prompts are encoded here (`inference.prompt_embeds`), not by the pipeline, so prompts longer
than CLIP's 75 tokens are used whole (in chunks) instead of being cut; `sample_with_info` says
how long the prompt was so the worker can tell the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from PIL.Image import Image

from core.job import Job
from inference.prompt_embeds import encode
from inference.samplers import apply_sampler


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


@torch.inference_mode()
def sample_with_info(
    pipe: StableDiffusionPipeline, job: Job, **pipeline_kwargs: Any
) -> Sampled:
    """Draw `job.count` images of `job` and say how its prompt was encoded.

    `pipeline_kwargs` go to the diffusers call as they are: the progress reporter's
    `callback_on_step_end` (`ProgressReporter.pipeline_kwargs()`), for instance.
    """
    # 1. A fresh scheduler for the job's sampler, on the model's noise schedule.
    apply_sampler(pipe, job.sampler)
    # 2. Encode the prompts, already repeated once per image.
    encoded = encode(pipe, job.prompt, job.negative_prompt, job.count)
    # 3. Denoise and decode: one image per embedding row, one generator per image.
    result = pipe(
        prompt_embeds=encoded.prompt_embeds,
        negative_prompt_embeds=encoded.negative_prompt_embeds,
        num_images_per_prompt=1,
        generator=generators(job),
        num_inference_steps=job.steps,
        guidance_scale=job.cfg,
        width=job.width,
        height=job.height,
        output_type="pil",
        **pipeline_kwargs,
    )
    return Sampled(
        images=list(result.images),
        tokens=encoded.tokens,
        negative_tokens=encoded.negative_tokens,
        chunks=encoded.chunks,
        note=encoded.note(),
    )


def sample(pipe: StableDiffusionPipeline, job: Job, **pipeline_kwargs: Any) -> list[Image]:
    """Just the images of `sample_with_info`."""
    return sample_with_info(pipe, job, **pipeline_kwargs).images
