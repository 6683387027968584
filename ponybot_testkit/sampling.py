"""Drawing one job the way the worker draws a batch of one: for tests and benches."""

from __future__ import annotations

from typing import Any

from PIL.Image import Image

from inference.drawing.sampling import Sampled, sample_batch
from ponybot_core.job import Job


def sample_with_info(pipe: Any, job: Job, **pipeline_kwargs: Any) -> Sampled:
    """Draw `job.count` images of `job` and say how its prompt was encoded."""
    return sample_batch(pipe, [job], **pipeline_kwargs)[0]


def sample(pipe: Any, job: Job, **pipeline_kwargs: Any) -> list[Image]:
    """Just the images."""
    return sample_with_info(pipe, job, **pipeline_kwargs).images
