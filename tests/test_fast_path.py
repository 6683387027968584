"""The fast path's switches: portable ones change no pixel on the CPU, the batch split
respects the image cap, VAE tiling only for big images."""

from __future__ import annotations

import numpy as np
import pytest

from inference.models.device import (
    choose_placement,
    chunk_by_images,
    configure_for_size,
    images_per_call,
    prepare,
)
from ponybot_core.config import WorkerConfig
from ponybot_testkit.sampling import sample_with_info
from ponybot_testkit.world import make_job


@pytest.fixture
def pipe(tiny_pipe):
    return tiny_pipe



def test_the_portable_switches_change_no_pixel_on_the_cpu(pipe):
    before = [np.asarray(i) for i in sample_with_info(pipe, make_job(count=2, seed=3)).images]
    prepare(pipe, choose_placement("cpu"), WorkerConfig())
    after = [np.asarray(i) for i in sample_with_info(pipe, make_job(count=2, seed=3)).images]
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
