"""What a worker draws for a group of jobs that share one pipeline call: text to image in a
batch (and for hires, each picture refined larger), a variation (img2img) of an earlier picture,
or the picture itself for an upscale.
Blocking: the worker runs it in a thread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL.Image import Image

from inference.drawing.img2img import refine, vary
from inference.drawing.sampling import Sampled, sample_batch
from inference.loop.faults import fault_point
from inference.models.device import Placement, chunk_by_images, configure_for_size, images_per_call
from ponybot_core.config import ModelEntry, WorkerConfig
from ponybot_core.job import Job, JobKind


def draw(pipe: Any, jobs: Sequence[Job], source: Image | None, config: WorkerConfig,
         pipeline_kwargs: dict[str, Any], model: ModelEntry | None = None) -> list[Sampled]:
    """Each job's images before upscaling, in the jobs' order. `model` is the jobs' config
    entry: how its text encoders are read (CLIP skip, long prompts) and its prediction type."""
    job = jobs[0]
    fault_point("sampling", job.id, " ".join(j.tags for j in jobs))
    if pipe is not None:
        configure_for_size(pipe, job.width, job.height, config)
    if job.kind is JobKind.GENERATE:
        sampled = sample_batch(pipe, jobs, model=model, **pipeline_kwargs)
        if job.hires is None:
            return sampled
        # Hires: each picture enlarged and refined by a second, img2img pass (`img2img.refine`).
        return [refine(pipe, j, s, config, model=model, **pipeline_kwargs)
                for j, s in zip(jobs, sampled, strict=True)]
    if source is None or len(jobs) != 1:
        raise ValueError(f"a {job.kind.value} job runs alone, from its source image")
    if job.kind is JobKind.VARIATION:
        return [vary(pipe, job, source, model=model, **pipeline_kwargs)]
    # An upscale starts from the source as it is.
    return [Sampled(images=[source], tokens=0, negative_tokens=0, chunks=1, note=None)]


def pipeline_calls(jobs: Sequence[Job], placement: Placement,
                   config: WorkerConfig) -> list[list[int]]:
    """Indices of `jobs` grouped into pipeline calls: compatible jobs together (one model,
    size, steps, sampler and cfg), each call within the images the device can hold."""
    compatible: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        compatible.setdefault(job.batch_key(), []).append(index)
    calls = []
    for indices in compatible.values():
        first = jobs[indices[0]]
        cap = images_per_call(placement, first.width, first.height, config)
        for chunk in chunk_by_images([jobs[i].count for i in indices], cap):
            calls.append([indices[i] for i in chunk])
    return calls
