"""img2img from a picture the worker already has: the variations (the V buttons, `/pony image:`)
and the second pass of a hires job (`/pony hires:true`, the ⬆️ Hires button).

The img2img pipeline is built from the loaded text-to-image pipeline's components
(`StableDiffusionImg2ImgPipeline(**pipe.components)`, or `StableDiffusionXLImg2ImgPipeline` for
SDXL): the same UNet, VAE and text encoder objects, no second copy of the weights, nothing
loaded. SDXL's img2img is built with `requires_aesthetics_score=False`: the aesthetic-score
conditioning belongs to the SDXL *refiner*'s UNet (its `projection_class_embeddings_input_dim`
counts 5 size/score numbers instead of the base's 6); a base model such as Pony Diffusion V6 XL
is conditioned on sizes and crops, exactly as its text to image. Everything else is sampled the way
`inference.drawing.sampling` samples: a fresh scheduler for the job's sampler, the prompts encoded
by `inference.drawing.prompt_embeds` (long prompts in 75-token chunks, never cut), and one CPU
generator per image so a variation's seed reproduces it.

Strength follows diffusers (and AUTOMATIC1111's default): the source is noised to
`strength` of the way and denoised from there, so `steps × strength` steps actually run; at
least one always does.

A hires job's second pass (planned by the bot, `ponybot_core/hires_plan.py`) is exactly a
variation: each first-pass picture enlarged to the hires size and refined by img2img at the
hires strength and steps. The picture is enlarged with Lanczos as a variation's source is
resized, so the second pass starts from a sharp picture rather than interpolated latents. One
picture per img2img call: at scale 2 a picture has 4× the pixels the first pass's call was sized
for (`inference.models.device.images_per_call`), so a batch of them could run out of memory
where the first pass did not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

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
from PIL import Image

from inference.drawing.prompt_embeds import TextOptions, encode_prompts
from inference.drawing.sampling import Sampled, generators, size_conditioning
from inference.drawing.schedulers import set_scheduler
from inference.models.device import configure_for_size
from ponybot_core.config import ModelEntry, WorkerConfig
from ponybot_core.downloads import normalised
from ponybot_core.job import Job, JobKind

# What shows through a transparent source picture (AUTOMATIC1111's img2img_background_color).
IMG2IMG_BACKGROUND = (255, 255, 255)


Text2Image = StableDiffusionPipeline | StableDiffusionXLPipeline
Img2Img = StableDiffusionImg2ImgPipeline | StableDiffusionXLImg2ImgPipeline


def img2img_view(pipe: Text2Image) -> Img2Img:
    """An img2img pipeline on `pipe`'s own modules (shared, not copied)."""
    components = dict(pipe.components)
    img2img: Img2Img
    if isinstance(pipe, StableDiffusionXLPipeline):
        img2img = StableDiffusionXLImg2ImgPipeline(
            **components, requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=getattr(pipe.config, "force_zeros_for_empty_prompt",
                                                 True),
            add_watermarker=False)
    else:
        components.setdefault("safety_checker", None)
        components.setdefault("feature_extractor", None)
        img2img = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    img2img.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return img2img


def inference_steps(steps: int, strength: float) -> int:
    """The `num_inference_steps` that makes diffusers run at least one denoising step:
    it runs `int(num_inference_steps * strength)` of them."""
    total = steps
    while int(total * strength) < 1:
        total += 1
    return total


def starting_image(source: Image.Image, width: int, height: int) -> Image.Image:
    """The source as the RGB it shows (transparency flattened on white, as AUTOMATIC1111's
    img2img does by default) at the job's size (an upscaled or downscaled file goes back to
    the size the model draws at)."""
    image = normalised(source, background=IMG2IMG_BACKGROUND)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


@torch.inference_mode()
def vary(
    pipe: Text2Image, job: Job, source: Image.Image, *, model: ModelEntry | None = None,
    **pipeline_kwargs: Any
) -> Sampled:
    """`job.count` variations of `source`. `model` is the job's config entry (CLIP skip, long
    prompts, prediction type). `pipeline_kwargs` go to the diffusers call as they are (the
    progress reporter's `callback_on_step_end`, for instance)."""
    # 1. Check the inputs.
    if job.kind is not JobKind.VARIATION or job.strength is None:
        raise ValueError(f"job {job.id} is a {job.kind.value} job, not a variation with a strength")
    # 2. An img2img view of the loaded weights, with a fresh scheduler for the job's sampler.
    img2img = img2img_view(pipe)
    set_scheduler(img2img, job.sampler, prediction=model.prediction if model else None)
    # 3. The starting image at the job's size, once per image.
    image = starting_image(source, job.width, job.height)
    # 4. Encode the prompts, already repeated once per image.
    encoded = encode_prompts(img2img, job.prompt, job.negative_prompt, job.count,
                             options=TextOptions.of(model))
    # 5. Noise the source to `strength` and denoise: one generator per image.
    result = img2img(
        **encoded.pipeline_kwargs(),
        **size_conditioning(img2img, job.width, job.height),
        image=[image] * job.count,
        strength=job.strength,
        num_inference_steps=inference_steps(job.steps, job.strength),
        num_images_per_prompt=1,
        generator=generators(job),
        guidance_scale=job.cfg,
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


def refine(pipe: Text2Image, job: Job, first: Sampled, config: WorkerConfig, *,
           model: ModelEntry | None = None, **pipeline_kwargs: Any) -> Sampled:
    """`job`'s first-pass pictures, each enlarged and refined; `pipeline_kwargs` go to every
    diffusers call (progress and cancel: a cancel stops the second pass too)."""
    if job.hires is None:
        raise ValueError(f"job {job.id} has no hires pass")
    # VAE tiling is chosen by the size decoded, and this pass decodes the large one.
    configure_for_size(pipe, job.hires.width, job.hires.height, config)
    refined = [vary(pipe, second_pass(job, seed), image, model=model,
                    **pipeline_kwargs).images[0]
               for image, seed in zip(first.images, job.image_seeds(), strict=True)]
    return dataclasses.replace(first, images=refined)
