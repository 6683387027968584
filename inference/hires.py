"""The second pass of a hires job (ponybot_core/hires.py): each first-pass picture enlarged to the
hires size and refined by img2img, which is exactly what a variation is (inference.variation):
the same img2img view of the loaded weights, scheduler, prompt encoding and seeded generator,
nothing loaded twice. The picture is enlarged with Lanczos as the variation path resizes its
source, so the second pass starts from a sharp picture rather than interpolated latents.

One picture per img2img call: at scale 2 a picture has 4× the pixels the first pass's call was
sized for (inference.fast_path.images_per_call), so a batch of them could run out of memory where
the first pass did not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diffusers import StableDiffusionPipeline

from inference.fast_path import configure_for_size
from inference.sampling import Sampled
from inference.variation import vary
from ponybot_core.config import WorkerConfig
from ponybot_core.job import Job, JobKind


def second_pass(job: Job, seed: int) -> Job:
    """One picture's second pass as the variation it is: img2img at the hires size, strength
    and steps, noised from the picture's own seed (as A1111's hires fix does)."""
    if job.hires is None:
        raise ValueError(f"job {job.id} has no hires pass")
    h = job.hires
    return job.model_copy(update={
        "kind": JobKind.VARIATION, "strength": h.strength, "steps": h.steps,
        "width": h.width, "height": h.height, "count": 1, "seed": seed, "hires": None,
    })  # fmt: skip


def refine(pipe: StableDiffusionPipeline, job: Job, first: Sampled, config: WorkerConfig,
           **pipeline_kwargs: Any) -> Sampled:
    """`job`'s first-pass pictures, each enlarged and refined; `pipeline_kwargs` go to every
    diffusers call (progress and cancel: a cancel stops the second pass too)."""
    if job.hires is None:
        raise ValueError(f"job {job.id} has no hires pass")
    # VAE tiling is chosen by the size decoded, and this pass decodes the large one.
    configure_for_size(pipe, job.hires.width, job.hires.height, config)
    refined = [vary(pipe, second_pass(job, seed), image, **pipeline_kwargs).images[0]
               for image, seed in zip(first.images, job.image_seeds(), strict=True)]
    return dataclasses.replace(first, images=refined)
