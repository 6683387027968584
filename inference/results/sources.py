"""The image an upscale (U, `/upscale`) or a variation (V, `/pony image:`) starts from: fetched
back from Discord.

Workers keep no images. The earlier job's state hash names the message its result was posted in
(`result_message_id`, recorded when it was posted); the worker fetches that message with
the bot token (discord.py's REST client, `GET /channels/{channel}/messages/{message}`) and
downloads attachment i from the URL Discord gives with it. Discord's attachment URLs are signed
and expire, so they are never stored: a fresh fetch gives fresh ones. Where the bot token may not
read the channel, the earlier interaction's token can still read its own message for 15 min.

A picture a user uploaded is fetched from the attachment URL Discord sent with the command
(kept with the job: a re-roll after Discord let it expire is told so), through
`ponybot_core.downloads` (Discord's hosts only, bounded size and time, its type read from its
bytes, its pixels counted before it is decoded).

Both kinds of picture are decoded the same way (`ponybot_core.downloads.decode_image`): only a
first frame, every frame of an animation counted first, within a deadline and stopped by a
Cancel, any damage one refusal, any pixel format as the RGB(A) it shows.

What cannot come back — the job expired from Redis, the message or the attachment deleted, a
picture refused — is a `SourceUnavailable` whose text is meant for the user; the worker gives
the job up with it, once. A Cancel while the picture decodes is `SamplingCancelled`, as it is
while sampling.
"""

from __future__ import annotations

import asyncio
import threading
import time

import discord
from PIL import Image

from inference.drawing.progress import SamplingCancelled
from ponybot_core.config import UploadsConfig
from ponybot_core.downloads import (
    DecodeCancelled,
    Decoded,
    DecodeGuard,
    DownloadRefused,
    decode_image,
    download_image,
)
from ponybot_core.job import Job, JobKind
from ponybot_core.queue import QueueReads

# The `image.info` key an uploaded picture's own parameters travel under to the result.
SOURCE_PARAMETERS = "source_parameters"
# A picture this bot posted was sized by its own config (an upscaled hires picture can pass the
# uploads' 16 M pixels): only Pillow's own bomb limit applies to it.
OWN_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class SourceUnavailable(Exception):
    """The source image cannot be had any more; `str(error)` tells the user why."""


async def fetch_source_image(client: discord.Client, queue: QueueReads, job: Job,
                             uploads: UploadsConfig,
                             cancelled: threading.Event | None = None) -> Image.Image:
    """Image `job.source_index` of job `job.source_job_id`, or the picture the user uploaded
    (`job.source_upload`), decoded (8-bit RGB, or RGBA where it is transparent). Setting
    `cancelled` stops the decode."""
    if job.source_job_id is None and job.source_upload is not None:
        return await fetch_upload(job, uploads, cancelled=cancelled)
    if job.source_job_id is None or job.source_index is None:
        raise ValueError(f"job {job.id} ({job.kind.value}) names no source image")
    # 1. The earlier job and where its result was posted.
    state = await queue.state(job.source_job_id)
    if state is None:
        raise SourceUnavailable(f"the earlier job `{job.source_job_id}` has expired")
    if state.result_message_id is None:
        raise SourceUnavailable(f"the earlier job `{job.source_job_id}` has no posted picture")
    source = state.job()
    # 2. The message, for its attachments' current URLs.
    message = await _fetch_message(client, source, state.result_message_id)
    if message is None:
        raise SourceUnavailable("the picture's message was deleted")
    images = [a for a in message.attachments if (a.content_type or "image/").startswith("image/")]
    if job.source_index >= len(images):
        raise SourceUnavailable(f"image {job.source_index + 1} is no longer on its message")
    # 3. The file itself.
    try:
        data = await images[job.source_index].read()
    except (discord.NotFound, discord.Forbidden) as exc:
        raise SourceUnavailable(f"image {job.source_index + 1} could not be downloaded") from exc
    try:
        picture = await _decoded(data, OWN_MAX_PIXELS, uploads.timeout_s, cancelled)
    except DownloadRefused as exc:
        raise SourceUnavailable(f"image {job.source_index + 1} could not be read back: "
                                f"{exc}") from exc
    return picture.image


async def fetch_upload(job: Job, uploads: UploadsConfig, *,
                       cancelled: threading.Event | None = None) -> Image.Image:
    """The picture a user attached to `/pony image:` or `/upscale`, fetched and decoded within
    this worker's own bounds (the bot checked only what Discord said about it). For an
    upscale, the picture's own `parameters` ride along in `image.info` so the upscaled file
    keeps them (inference.results.post), as AUTOMATIC1111's upscaler does."""
    assert job.source_upload is not None
    max_pixels = uploads.upscale_max_pixels if job.kind is JobKind.UPSCALE else uploads.max_pixels
    try:
        downloaded = await download_image(job.source_upload.url, hosts=uploads.hosts,
                                          max_bytes=uploads.max_bytes, timeout_s=uploads.timeout_s)
        picture = await _decoded(downloaded.data, max_pixels, uploads.timeout_s, cancelled)
    except DownloadRefused as exc:
        raise SourceUnavailable(f"your picture cannot be used: {exc}") from exc
    if picture.parameters:
        picture.image.info[SOURCE_PARAMETERS] = picture.parameters
    return picture.image


async def _decoded(data: bytes, max_pixels: int, timeout_s: float,
                   cancelled: threading.Event | None) -> Decoded:
    """`decode_image` off the event loop (leases, heartbeats and the cancel watcher go on),
    stopped by its deadline (the download's timeout, again) or a Cancel."""
    guard = DecodeGuard(timeout_s=timeout_s, cancelled=cancelled)
    try:
        return await asyncio.to_thread(decode_image, data, max_pixels=max_pixels, guard=guard)
    except DecodeCancelled:
        raise SamplingCancelled(0, 0) from None


async def _fetch_message(
    client: discord.Client, source: Job, message_id: int
) -> discord.Message | discord.WebhookMessage | None:
    """The message, or None when it is gone. Other HTTP errors (5xx after discord.py's own
    retries) propagate: the worker retries the job later."""
    channel = client.get_partial_messageable(source.channel_id, guild_id=source.guild_id)
    try:
        return await channel.fetch_message(message_id)
    except discord.NotFound:
        return None
    except discord.Forbidden:
        if not source.token_usable(time.time()):
            raise SourceUnavailable("the bot may not read the picture's channel") from None
    webhook = discord.Webhook.partial(
        source.application_id, source.interaction_token, client=client
    )
    try:
        return await webhook.fetch_message(message_id)
    except discord.NotFound:
        return None
