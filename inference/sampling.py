"""Sampling one job's images with its own seeded generators."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from PIL.Image import Image

from core.job import Job
from inference.samplers import apply_sampler


def generators(job: Job) -> list[torch.Generator]:
    # CPU generators: the initial noise, and so the picture, is the same on every device.
    return [torch.Generator("cpu").manual_seed(seed) for seed in job.image_seeds()]


@torch.inference_mode()
def sample(pipe: StableDiffusionPipeline, job: Job) -> list[Image]:
    apply_sampler(pipe, job.sampler)
    result = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt or None,
        num_images_per_prompt=job.count,
        generator=generators(job),
        num_inference_steps=job.steps,
        guidance_scale=job.cfg,
        width=job.width,
        height=job.height,
        output_type="pil",
    )
    return list(result.images)
