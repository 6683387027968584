"""Batching compatible jobs into one pipeline call: every job gets its own images, seeds and
prompt, in order, as if it had run alone (up to ±1/255 rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import ModelEntry, Sampler
from core.job import Job
from inference.loading import load_pipeline
from inference.sampling import sample_batch, sample_with_info


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with the rest of the suite
    yield load_pipeline(ModelEntry(id="tiny", name="Tiny", path=tiny_pipeline_dir),
                        base_dir=tiny_pipeline_dir.parent)
    torch.set_num_threads(threads)


def a_job(**overrides: object) -> Job:
    fields: dict[str, object] = dict(
        application_id=1, interaction_id=2, interaction_token="t", guild_id=3, channel_id=4,
        user_id=5, model_id="tiny", tags="pony", prompt="pony, solo", negative_prompt="",
        seed=1, steps=2, cfg=7.5, sampler=Sampler.DDIM, width=64, height=64,
    )
    fields.update(overrides)
    return Job.model_validate(fields)


def arrays(images) -> list[np.ndarray]:
    return [np.asarray(i.convert("RGB")).astype(int) for i in images]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a - b).max()) <= 2


def test_each_job_in_a_batch_gets_the_images_its_seeds_and_prompt_give(pipe):
    jobs = [a_job(seed=10, count=2, prompt="twilight sparkle, unicorn"),
            a_job(seed=50, prompt="rainbow dash, pegasus, flying"),
            a_job(seed=77, count=1, prompt="applejack, hat", negative_prompt="blurry")]

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
    jobs = [a_job(seed=1), a_job(seed=2, prompt=long_prompt), a_job(seed=3)]

    batched = sample_batch(pipe, jobs)

    assert batched[0].chunks == batched[2].chunks == 1 < batched[1].chunks
    alone = arrays(sample_with_info(pipe, jobs[1]).images)
    assert close(arrays(batched[1].images)[0], alone[0])


def test_incompatible_jobs_are_refused(pipe):
    with pytest.raises(AssertionError):
        sample_batch(pipe, [a_job(steps=2), a_job(steps=3)])


def test_a_user_chosen_seed_is_never_batched():
    assert a_job(seeded=True).batch_key() != a_job(seeded=True).batch_key()
    assert a_job().batch_key() == a_job(seed=9, prompt="other").batch_key()
