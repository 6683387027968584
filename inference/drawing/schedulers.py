"""Samplers: the noise schedule a model was trained with, sampled three ways.

Every SD 1.x pony fine-tune was trained on the same noise schedule (1000 `scaled_linear` steps
from 0.00085 to 0.012, epsilon prediction). A sampler is a way of walking that schedule; swapping
samplers must never change the schedule itself, only the walk. `make_scheduler` therefore copies
the *schedule* keys from the model's scheduler config and sets the sampler's own knobs
explicitly, so the result does not depend on which sampler ran before (a DPM++ config fed to
Euler a does not smuggle its Karras sigmas along).

The prediction type (epsilon, or SD 2.x 768's `v_prediction`) is part of the schedule: every
sampler keeps the base config's, and a model entry's `prediction` overrides it (a v-prediction
fine-tune shipped with an epsilon scheduler config would otherwise draw noise).

Schedulers are stateful (`set_timesteps`), so build a fresh one per job; nothing here is cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# From where each is defined: diffusers' top level shows type checkers stand-in classes.
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
)

from ponybot_core.config import PredictionType, Sampler

# The pony-diffusion model card's scheduler: DDIM on the SD 1.x training schedule.
SEED_DDIM_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# What the model was trained with (and how timesteps are spaced over it): carried over from the
# base config by every sampler. Everything else is the sampler's own business.
_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
)

_DDIM_KNOBS = {"clip_sample": False, "set_alpha_to_one": False}
_DPMPP_2M_KARRAS_KNOBS = {
    "use_karras_sigmas": True,
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
}


# The schedulers a sampler picks (`make_scheduler`).
Scheduler = DDIMScheduler | EulerAncestralDiscreteScheduler | DPMSolverMultistepScheduler

def schedule_of(base_config: Mapping[str, Any]) -> dict[str, Any]:
    """The training-schedule part of a scheduler config (betas, timesteps, prediction type)."""
    return {key: base_config[key] for key in _SCHEDULE_KEYS if key in base_config}


def make_scheduler(base_config: Mapping[str, Any], sampler: Sampler,
                   prediction: PredictionType | None = None) -> Scheduler:
    """A new scheduler for `sampler` on the noise schedule of `base_config`.

    `base_config` is a scheduler config (`pipe.scheduler.config`, or `SEED_DDIM_CONFIG`);
    `prediction`, when given, replaces its prediction type.
    """
    schedule = schedule_of(base_config)
    if prediction is not None:
        schedule["prediction_type"] = PredictionType(prediction).value
    sampler = Sampler(sampler)
    if sampler is Sampler.DDIM:
        return DDIMScheduler.from_config(schedule, **_DDIM_KNOBS)
    if sampler is Sampler.EULER_A:
        return EulerAncestralDiscreteScheduler.from_config(schedule)
    if sampler is Sampler.DPMPP_2M_KARRAS:
        return DPMSolverMultistepScheduler.from_config(schedule, **_DPMPP_2M_KARRAS_KNOBS)
    raise ValueError(f"unknown sampler {sampler!r}")  # pragma: no cover - exhaustive above


def set_scheduler(pipe: StableDiffusionPipeline | StableDiffusionImg2ImgPipeline
                  | StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline,
                  sampler: Sampler, prediction: PredictionType | None = None) -> Scheduler:
    """Give `pipe` a fresh scheduler for `sampler` (same schedule, `prediction` overriding its
    prediction type when given); returns it."""
    scheduler = make_scheduler(pipe.scheduler.config, sampler, prediction)
    pipe.scheduler = scheduler
    return scheduler
