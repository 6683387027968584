"""A picture attached to a command, checked from what Discord says about it before anything is
queued: its type, size, pixels and where it is served from. Nothing is downloaded here (the
answer must come within 3 seconds); the worker checks the bytes themselves again
(ponybot_core.downloads), since a description is only a description."""

from __future__ import annotations

import math
from dataclasses import dataclass

import discord

from bot.errors import UserFacingError
from ponybot_core.config import Config, UploadsConfig
from ponybot_core.downloads import IMAGE_TYPES, describe_bytes, url_allowed
from ponybot_core.job import Job, JobKind, UploadedImage

# The smallest side a job may have (Job.width/height), and their step.
_MIN_SIDE = 64
_STEP = 8


def checked_upload(attachment: discord.Attachment, uploads: UploadsConfig, *,
                   max_pixels: int) -> UploadedImage:
    """The attachment as a job's source; raises UserFacingError naming what is wrong."""
    name = discord.utils.escape_markdown(attachment.filename)
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type not in IMAGE_TYPES:
        raise UserFacingError(f"`{name}` is not a PNG, JPEG or WebP picture"
                              f"{f' (Discord says {content_type})' if content_type else ''}.")
    if attachment.size > uploads.max_bytes:
        raise UserFacingError(f"`{name}` is {describe_bytes(attachment.size)}; pictures may be "
                              f"at most {describe_bytes(uploads.max_bytes)}.")
    if not attachment.width or not attachment.height:
        raise UserFacingError(f"Discord could not read `{name}` as a picture; is it damaged?")
    pixels = attachment.width * attachment.height
    if pixels > max_pixels:
        raise UserFacingError(f"`{name}` is {attachment.width}×{attachment.height} pixels; "
                              f"pictures may have at most {max_pixels:,} pixels.")
    if not url_allowed(attachment.url, uploads.hosts):
        raise UserFacingError(f"`{name}` is not on Discord's attachment servers, so it is "
                              "not fetched.")
    return UploadedImage(url=attachment.url, filename=attachment.filename,
                         content_type=content_type, size=attachment.size,
                         width=attachment.width, height=attachment.height)


def model_size(width: int, height: int, config: Config) -> tuple[int, int]:
    """The size to draw an uploaded picture at: its aspect, about as many pixels as the
    default size has (what the model draws best), no side longer than the longest configured
    one or shorter than 64, sides multiples of 8."""
    native = config.sizes[config.defaults.size]
    longest = max(max(d.width, d.height) for d in config.sizes.values())
    scale = min(math.sqrt(native.width * native.height / (width * height)),
                longest / max(width, height))
    # A short side under 64 would be stretched to 64: enlarge the whole picture instead (only
    # a picture more than longest/64 times wider than high is stretched at all).
    scale = max(scale, _MIN_SIDE / min(width, height))

    def side(length: int) -> int:
        return max(_MIN_SIDE, round(length * scale / _STEP) * _STEP)

    return min(side(width), longest), min(side(height), longest)


@dataclass(frozen=True)
class Img2Img:
    """`/pony image:`: draw from the uploaded picture, at its aspect (img2img, as the V buttons
    do from an earlier picture: the same job kind, the same worker path)."""

    source: UploadedImage
    strength: float
    width: int
    height: int

    def apply(self, job: Job) -> Job:
        return Job.model_validate({
            **job.model_dump(), "kind": JobKind.VARIATION, "source_upload": self.source,
            "strength": self.strength, "width": self.width, "height": self.height,
        })  # fmt: skip


def img2img_from(config: Config, image: discord.Attachment | None, strength: float | None, *,
                 size_given: bool) -> Img2Img | None:
    """What `/pony`'s `image:` and `strength:` ask for (None: text to image); raises
    UserFacingError for a bad picture or options that do not go together."""
    if image is None:
        if strength is not None:
            raise UserFacingError("`strength` is how far to move away from a picture: give one "
                                  "with `image`, or ask again without `strength`.")
        return None
    if size_given:
        raise UserFacingError("With `image`, the picture's own shape sets the size: ask again "
                              "without `size`.")
    source = checked_upload(image, config.uploads, max_pixels=config.uploads.max_pixels)
    width, height = model_size(source.width, source.height, config)
    return Img2Img(source, strength if strength is not None else config.variation_strength,
                   width, height)
