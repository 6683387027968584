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

What cannot come back — the job expired from Redis, the message or the attachment deleted — is a
`SourceUnavailable` whose text is meant for the user; the worker gives the job up with it.
"""

from __future__ import annotations

import asyncio
import io
import time

import discord
from PIL import Image

from ponybot_core.config import UploadsConfig
from ponybot_core.downloads import DownloadRefused, decode_image, download_image, open_image
from ponybot_core.image_parameters import parameters_of
from ponybot_core.job import Job, JobKind
from ponybot_core.queue import QueueView

# The `image.info` key an uploaded picture's own parameters travel under to the result.
SOURCE_PARAMETERS = "source_parameters"


class SourceUnavailable(Exception):
    """The source image cannot be had any more; `str(error)` tells the user why."""


async def fetch_source_image(client: discord.Client, queue: QueueView, job: Job,
                             uploads: UploadsConfig) -> Image.Image:
    """Image `job.source_index` of job `job.source_job_id`, or the picture the user uploaded
    (`job.source_upload`), decoded (mode as posted)."""
    if job.source_job_id is None and job.source_upload is not None:
        return await fetch_upload(job, uploads)
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
    return await asyncio.to_thread(_decode, data)


async def fetch_upload(job: Job, uploads: UploadsConfig) -> Image.Image:
    """The picture a user attached to `/pony image:` or `/upscale`, fetched and decoded within
    this worker's own bounds (the bot checked only what Discord said about it). For an
    upscale, the picture's own `parameters` ride along in `image.info` so the upscaled file
    keeps them (inference.result_post), as AUTOMATIC1111's upscaler does."""
    assert job.source_upload is not None
    max_pixels = uploads.upscale_max_pixels if job.kind is JobKind.UPSCALE else uploads.max_pixels
    try:
        downloaded = await download_image(job.source_upload.url, hosts=uploads.hosts,
                                          max_bytes=uploads.max_bytes, timeout_s=uploads.timeout_s)
        return await asyncio.to_thread(_decode_upload, downloaded.data, max_pixels)
    except DownloadRefused as exc:
        raise SourceUnavailable(f"your picture cannot be used: {exc}") from exc


def _decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    parameters = parameters_of(open_image(data, max_pixels=max_pixels))
    image = decode_image(data, max_pixels=max_pixels)
    if parameters:
        image.info[SOURCE_PARAMETERS] = parameters
    return image


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


def _decode(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # truncated download, not an image
        raise SourceUnavailable("the picture could not be read back") from exc
    return image
