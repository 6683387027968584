"""Variations (the V buttons): img2img from an earlier image with the same prompt and a new seed.

The img2img pipeline is built from the loaded text-to-image pipeline's components
(`StableDiffusionImg2ImgPipeline(**pipe.components)`): the same UNet, VAE and text encoder
objects, no second copy of the weights, nothing loaded. Everything else is sampled the way
`inference.sampling` samples: a fresh scheduler for the job's sampler, the prompts encoded
by `inference.prompt_embeds` (long prompts in 75-token chunks, never cut), and one CPU
generator per image so a variation's seed reproduces it.

Strength follows diffusers (and AUTOMATIC1111's default): the source is noised to
`strength` of the way and denoised from there, so `steps × strength` steps actually run; at
least one always does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from inference.prompt_embeds import encode_prompts
from inference.sampling import Sampled, generators
from inference.schedulers import set_scheduler
from ponybot_core.downloads import normalised
from ponybot_core.job import Job, JobKind

# What shows through a transparent source picture (AUTOMATIC1111's img2img_background_color).
IMG2IMG_BACKGROUND = (255, 255, 255)


def img2img_view(pipe: StableDiffusionPipeline) -> StableDiffusionImg2ImgPipeline:
    """An img2img pipeline on `pipe`'s own modules (shared, not copied)."""
    components = dict(pipe.components)
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
    pipe: StableDiffusionPipeline, job: Job, source: Image.Image, **pipeline_kwargs: Any
) -> Sampled:
    """`job.count` variations of `source`. `pipeline_kwargs` go to the diffusers call as they
    are (the progress reporter's `callback_on_step_end`, for instance)."""
    # 1. Check the inputs.
    if job.kind is not JobKind.VARIATION or job.strength is None:
        raise ValueError(f"job {job.id} is a {job.kind.value} job, not a variation with a strength")
    # 2. An img2img view of the loaded weights, with a fresh scheduler for the job's sampler.
    img2img = img2img_view(pipe)
    set_scheduler(img2img, job.sampler)
    # 3. The starting image at the job's size, once per image.
    image = starting_image(source, job.width, job.height)
    # 4. Encode the prompts, already repeated once per image.
    encoded = encode_prompts(img2img, job.prompt, job.negative_prompt, job.count)
    # 5. Noise the source to `strength` and denoise: one generator per image.
    result = img2img(
        prompt_embeds=encoded.prompt_embeds,
        negative_prompt_embeds=encoded.negative_prompt_embeds,
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
