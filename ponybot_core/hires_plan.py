"""The two-pass "hires" render (`/pony hires:true`, the ⬆️ Hires button), as the bot plans it and
the queue weighs it.

SD 1.x models learned their pictures at 512 px; drawn straight at 1024 px they tile the subject
(two heads, extra legs). The common way around it, AUTOMATIC1111's "hires fix": draw at the
model's native size, upscale that picture, and refine it with img2img at a partial strength, so
the composition comes from the native pass and only the detail from the large one.

The bot resolves everything here from `[hires]` in config.toml when it queues the job, so the
job carries its own plan (`HiresPass`): the worker needs no config to draw it, and the queue can
weigh its cost (`Job.work_units`) without asking anyone. Nothing here imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from ponybot_core.config import HiresConfig

# How the first pass's picture is enlarged before the second pass (PIL's Lanczos, as
# inference.drawing.img2img.starting_image resizes); named in the PNG parameters as A1111 does.
UPSCALER_NAME = "Lanczos"


class HiresPass(BaseModel):
    """The second pass of a hires job: the final size, and the img2img that refines it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    width: Annotated[int, Field(ge=64, multiple_of=8)]
    height: Annotated[int, Field(ge=64, multiple_of=8)]
    strength: Annotated[float, Field(gt=0, le=1)]
    # diffusers' `num_inference_steps` of the img2img call: `denoising_steps` of them run.
    steps: Annotated[int, Field(ge=1)]

    @property
    def denoising_steps(self) -> int:
        """The steps the second pass actually runs: img2img noises the picture `strength` of
        the way and denoises from there (at least one step, as the worker's img2img ensures)."""
        return max(1, int(self.steps * self.strength))

    def scale(self, width: int) -> float:
        """How much larger than the first pass (of `width` px) the picture ends."""
        return self.width / width


class HiresTooLarge(ValueError):
    """The size asked for is already as large as `[hires] max_side` allows."""


def plan(config: HiresConfig, width: int, height: int, steps: int) -> HiresPass:
    """The second pass for a first pass of `width`×`height` px and `steps` steps: `scale` times
    larger, but no side over `max_side` (the scale shrinks to fit, keeping the aspect), each
    side a multiple of 8 (the VAE's). Raises HiresTooLarge when nothing would be gained."""
    longest = max(width, height)
    if longest * config.scale > config.max_side:  # the longest side becomes max_side exactly
        sides = [side * config.max_side // longest for side in (width, height)]
    else:  # rounded first: 392 × (64 / 392) is 63.99999999999999 in floating point
        sides = [int(round(side * config.scale, 6)) for side in (width, height)]
    final_w, final_h = (side // 8 * 8 for side in sides)
    if final_w <= width or final_h <= height:
        raise HiresTooLarge(
            f"{width}×{height} is already as large as hires goes here "
            f"(at most {config.max_side} px a side)"
        )
    return HiresPass(width=final_w, height=final_h, strength=config.strength,
                     steps=config.steps or steps)
