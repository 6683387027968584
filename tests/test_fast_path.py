"""The fast path's switches: portable ones change no pixel on the CPU, the batch split
respects the image cap, VAE tiling only for big images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import ModelEntry, Sampler, WorkerConfig
from core.job import Job
from inference.device import choose_placement
from inference.fast_path import chunk_by_images, configure_for_size, images_per_call, prepare
from inference.loading import load_pipeline
from inference.sampling import sample_with_info


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_pipeline(ModelEntry(id="tiny", name="Tiny", path=tiny_pipeline_dir),
                        base_dir=tiny_pipeline_dir.parent)
    torch.set_num_threads(threads)


def a_job(**overrides: object) -> Job:
    fields: dict[str, object] = dict(
        application_id=1, interaction_id=2, interaction_token="t", guild_id=3, channel_id=4,
        user_id=5, model_id="tiny", tags="pony", prompt="pony, solo", negative_prompt="",
        seed=3, count=2, steps=2, cfg=7.5, sampler=Sampler.DDIM, width=64, height=64,
    )
    fields.update(overrides)
    return Job.model_validate(fields)


def test_the_portable_switches_change_no_pixel_on_the_cpu(pipe):
    before = [np.asarray(i) for i in sample_with_info(pipe, a_job()).images]
    prepare(pipe, choose_placement("cpu"), WorkerConfig())
    after = [np.asarray(i) for i in sample_with_info(pipe, a_job()).images]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_vae_tiling_is_only_for_images_above_the_threshold(pipe):
    config = WorkerConfig(vae_tiling_above_px=64 * 64)
    configure_for_size(pipe, 64, 64, config)
    assert not pipe.vae.use_tiling
    configure_for_size(pipe, 128, 64, config)
    assert pipe.vae.use_tiling
    configure_for_size(pipe, 64, 64, config)
    assert not pipe.vae.use_tiling


def test_on_the_cpu_the_images_per_call_are_the_configured_cap():
    config = WorkerConfig(max_images_per_call=5)
    assert images_per_call(choose_placement("cpu"), 512, 512, config) == 5


@pytest.mark.parametrize(("counts", "cap", "chunks"), [
    ([1, 1, 1, 1], 4, [[0, 1, 2, 3]]),
    ([2, 2, 1], 4, [[0, 1], [2]]),
    ([4, 4], 4, [[0], [1]]),
    ([6, 1], 4, [[0], [1]]),  # a job bigger than the cap runs alone
    ([1, 3, 1, 3], 4, [[0, 1], [2, 3]]),
])
def test_batches_are_split_in_order_to_respect_the_image_cap(counts, cap, chunks):
    assert chunk_by_images(counts, cap) == chunks
