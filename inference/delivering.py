"""Putting a finished job in front of its user: the result message, fitted again smaller when
Discord calls it too large, and the progress edits while it samples."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from PIL.Image import Image

from inference.result_post import files_budget, render_post
from ponybot_core.config import Config
from ponybot_core.logs import JobLog
from ponybot_core.poster import Post, Poster, PostFailed
from ponybot_core.queue import Delivery

log = logging.getLogger(__name__)

# A message Discord calls too large is fitted to half its size, at most this many times.
SMALLER_POSTS = 4


async def post_result(poster: Poster, config: Config, delivery: Delivery, images: list[Image],
                      notes: Sequence[str], upscaled_by: str | None, *,
                      elapsed_s: float) -> tuple[int, float]:
    """(message id, seconds spent encoding). Every file and the whole message are fitted
    under Discord's limits; a 413 refits at half the size: a job never fails for size."""
    job = delivery.job
    budget = files_budget(config)
    encode_s = 0.0
    for attempt in range(SMALLER_POSTS + 1):
        started = time.perf_counter()
        post: Post = await asyncio.to_thread(
            render_post, config, job, images, elapsed_s=elapsed_s, notes=list(notes),
            upscaled_by=upscaled_by, total_limit=budget)
        encode_s += time.perf_counter() - started
        try:
            return await poster.deliver(job, await delivery.message(), post), encode_s
        except PostFailed as exc:
            if not exc.too_large or attempt == SMALLER_POSTS:
                raise
            budget = sum(len(a.data) for a in post.attachments) // 2
            JobLog(log, job.id).warning("Discord: message too large; refitting to %d bytes",
                                        budget)
    raise AssertionError("unreachable")


def progress_editor(poster: Poster, call: Sequence[Delivery]
                    ) -> Callable[[int, int, bytes | None], Awaitable[None]]:
    """Shows "sampling n/N" and the preview on every queued message of a pipeline call."""

    async def edit(step: int, total: int, preview: bytes | None) -> None:
        for delivery in call:
            message_id = await delivery.message()
            if message_id is not None:
                await poster.show_progress(delivery.job, message_id, step, total, preview)

    return edit
