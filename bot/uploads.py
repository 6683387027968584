"""A picture attached to a command, checked from what Discord says about it before anything is
queued: its type, size, pixels and where it is served from. Nothing is downloaded here (the
answer must come within 3 seconds); the worker checks the bytes themselves again
(ponybot_core.downloads), since a description is only a description. What the picture then
asks for (img2img at its aspect, an upscale) is ponybot_request.jobs.build_job's."""

from __future__ import annotations

import discord

from bot.errors import UserFacingError
from ponybot_core.config import UploadsConfig
from ponybot_core.downloads import IMAGE_TYPES, describe_bytes, url_allowed
from ponybot_core.job import UploadedImage


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
