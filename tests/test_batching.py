"""Batching compatible jobs into one pipeline call: every job gets its own images, seeds and
prompt, in order, as if it had run alone (up to ±1/255 rounding)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.drawing.sampling import sample_batch
from ponybot_testkit.sampling import sample_with_info
from ponybot_testkit.world import make_job


@pytest.fixture
def pipe(tiny_pipe):
    return tiny_pipe



def arrays(images) -> list[np.ndarray]:
    return [np.asarray(i.convert("RGB")).astype(int) for i in images]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a - b).max()) <= 2


def test_each_job_in_a_batch_gets_the_images_its_seeds_and_prompt_give(pipe):
    jobs = [make_job(seed=10, count=2, prompt="twilight sparkle, unicorn"),
            make_job(seed=50, prompt="rainbow dash, pegasus, flying"),
            make_job(seed=77, count=1, prompt="applejack, hat", negative_prompt="blurry")]

    batched = sample_batch(pipe, jobs)

    assert [len(s.images) for s in batched] == [2, 1, 1]
    for job, result in zip(jobs, batched, strict=True):
        alone = arrays(sample_with_info(pipe, job).images)
        assert all(close(a, b) for a, b in zip(arrays(result.images), alone, strict=True))
    everything = [a for s in batched for a in arrays(s.images)]
    assert all(not close(everything[i], everything[j])
               for i in range(len(everything)) for j in range(i + 1, len(everything)))


def test_a_long_prompt_in_a_batch_is_sampled_whole_in_its_own_call(pipe):
    long_prompt = ", ".join(f"tag{i}" for i in range(60))  # well past 75 tokens
    jobs = [make_job(seed=1), make_job(seed=2, prompt=long_prompt), make_job(seed=3)]

    batched = sample_batch(pipe, jobs)

    assert batched[0].chunks == batched[2].chunks == 1 < batched[1].chunks
    alone = arrays(sample_with_info(pipe, jobs[1]).images)
    assert close(arrays(batched[1].images)[0], alone[0])


def test_incompatible_jobs_are_refused(pipe):
    with pytest.raises(AssertionError):
        sample_batch(pipe, [make_job(steps=2), make_job(steps=3)])


def test_a_user_chosen_seed_is_never_batched():
    assert make_job(seeded=True).batch_key() != make_job(seeded=True).batch_key()
    assert make_job().batch_key() == make_job(seed=9, prompt="other").batch_key()
