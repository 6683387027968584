"""The image an upscale (U) or a variation (V) starts from: fetched back from Discord.

Workers keep no images. The earlier job's state hash names the message its result was posted in
(`result_message_id`, recorded when it was posted); the worker fetches that message with
the bot token (discord.py's REST client, `GET /channels/{channel}/messages/{message}`) and
downloads attachment i from the URL Discord gives with it. Discord's attachment URLs are signed
and expire, so they are never stored: a fresh fetch gives fresh ones. Where the bot token may not
read the channel, the earlier interaction's token can still read its own message for 15 min.

What cannot come back — the job expired from Redis, the message or the attachment deleted — is a
`SourceUnavailable` whose text is meant for the user; the worker gives the job up with it.
"""

from __future__ import annotations

import asyncio
import io
import time

import discord
from PIL import Image

from ponybot_core.job import Job
from ponybot_core.queue import QueueView


class SourceUnavailable(Exception):
    """The source image cannot be had any more; `str(error)` tells the user why."""


async def fetch_source_image(client: discord.Client, queue: QueueView, job: Job) -> Image.Image:
    """Image `job.source_index` of job `job.source_job_id`, decoded (mode as posted)."""
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
