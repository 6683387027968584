"""The result message of a job (step 9 of `Worker.process`), and the queued message's progress
edits before it.

The message: images fitted under Discord's limits with their parameters (`fit`), the text, the
embed and the buttons; shared by the worker and anything else that renders a job's images the
same way (the local `draw`). Posted into the queued message, fitted again smaller when Discord
calls it too large: a job never fails for size. While the job samples, the same message shows
"sampling n/N" and a preview."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import discord
from PIL.Image import Image

from inference.results.fit import fit_images
from inference.results.model_hash import MODEL_HASHES
from inference.results.sources import SOURCE_PARAMETERS
from inference.safety.channels import is_age_restricted_now
from inference.safety.checking import Checked
from ponybot_core.config import Config
from ponybot_core.custom_ids import Action, custom_id, result_buttons
from ponybot_core.hires_plan import UPSCALER_NAME as HIRES_UPSCALER
from ponybot_core.image_parameters import format_parameters
from ponybot_core.job import Job, JobKind
from ponybot_core.logs import JobLog
from ponybot_core.messages import result_embed, result_text, result_view, sent_view
from ponybot_core.poster import Attachment, Post, Poster, PostFailed
from ponybot_core.queue import Delivery

log = logging.getLogger(__name__)

# A message Discord calls too large is fitted to half its size, at most this many times.
SMALLER_POSTS = 4


async def post_result(poster: Poster, config: Config, delivery: Delivery, images: list[Image],
                      notes: Sequence[str], upscaled_by: str | None, *,
                      elapsed_s: float, checked: Checked | None = None) -> tuple[int, float]:
    """(message id, seconds spent encoding). Every file and the whole message are fitted
    under Discord's limits; a 413 refits at half the size: a job never fails for size.
    `checked`: what the picture check made of `images` (inference/safety): its pictures,
    placeholders and spoilers are what is posted."""
    job = delivery.job
    if checked is not None:
        images, notes = checked.images, [*notes, *checked.notes]
    budget = files_budget(config)
    encode_s = 0.0
    for attempt in range(SMALLER_POSTS + 1):
        started = time.perf_counter()
        post: Post = await asyncio.to_thread(
            render_post, config, job, images, elapsed_s=elapsed_s, notes=list(notes),
            upscaled_by=upscaled_by, total_limit=budget, checked=checked)
        encode_s += time.perf_counter() - started
        try:
            return await poster.post(job, await delivery.message(), post), encode_s
        except PostFailed as exc:
            if not exc.too_large or attempt == SMALLER_POSTS:
                raise
            budget = sum(len(a.data) for a in post.attachments) // 2
            JobLog(log, job.id).warning("Discord: message too large; refitting to %d bytes",
                                        budget)
    raise AssertionError("unreachable")


async def redirect_flagged(poster: Poster, config: Config, job: Job, checked: Checked
                           ) -> Checked:
    """Before the result is posted (and after the job is marked `posting`): the flagged
    pictures the server sends to its age-restricted channel, posted there. Done before the
    result so that a worker that dies after posting the result has delivered them already
    (the job taken over is found posted and finished as it is); a worker that dies between
    the two posts draws the job again and posts here again under the same nonce, which
    Discord answers with the first message. Returns what the result then says: `checked`,
    or, when they could not be posted there, the same pictures withheld and the requester
    told so. Never raises, and never posts a flagged picture in a channel that is not
    age-restricted."""
    if not checked.redirected or await _redirect(poster, config, job, checked):
        return checked
    note = ("⚠️ The picture check flagged a picture, and it could not be posted in the "
            "server's age-restricted channel, so it was not posted anywhere.")
    return replace(checked, redirected=[], notes=[note],
                   private=f"{note}\n{checked.private or ''}".strip())


async def tell_requester(poster: Poster, job: Job, checked: Checked) -> None:
    """After the result is posted: the requester told privately what the check did (an
    ephemeral followup while the interaction's token lives; after that the result's own note
    is what they get). Best effort: a worker that dies before this leaves the note."""
    if checked.private and not await poster.whisper(job, checked.private[:2000]):
        JobLog(log, job.id).info("picture check: requester told in the result only "
                                 "(token gone)")


async def _redirect(poster: Poster, config: Config, job: Job, checked: Checked) -> bool:
    channel_id = job.picture_check.redirect_channel_id
    jlog = JobLog(log, job.id)
    try:
        assert channel_id is not None
        # Asked now, not trusted from when `/safety` set it: an admin may have lifted the age
        # restriction since.
        if not await is_age_restricted_now(poster.client, channel_id):
            jlog.warning("picture check: channel %s is not age-restricted; flagged pictures "
                         "withheld", channel_id)
            return False
        channel = poster.client.get_partial_messageable(channel_id, guild_id=job.guild_id)
        indices = [i for i, _ in checked.redirected]
        seeds = job.image_seeds()
        model_name = config.model(job.model_id).name
        fitted = await asyncio.to_thread(fit_images, [
            (image, image_parameters(job, seeds[i], model_name, None,
                                     image.info.get(SOURCE_PARAMETERS),
                                     **model_parameters(config, job)))
            for i, image in checked.redirected],
            attachment_limit(config, job), files_budget(config))
        files = [Attachment(f.filename(f"pony_{job.id}_{seeds[i]}_flagged"), f.data).to_file()
                 for i, f in zip(indices, fitted, strict=True)]
        where = f"<#{job.channel_id}>"
        await channel.send(
            content=(f"<@{job.user_id}> the picture check flagged "
                     f"{'this picture' if len(files) == 1 else 'these pictures'} from {where}, "
                     f"so {'it is' if len(files) == 1 else 'they are'} posted here instead."
                     f"\n-# job {job.id}"),
            files=files, nonce=f"s{job.id}",
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False,
                                                     users=[discord.Object(job.user_id)]))
        return True
    except Exception as exc:
        jlog.warning("picture check: could not post in channel %s: %r", channel_id, exc)
        return False


def progress_editor(poster: Poster, call: Sequence[Delivery]
                    ) -> Callable[[int, int, bytes | None], Awaitable[None]]:
    """Shows "sampling n/N" and the preview on every queued message of a pipeline call."""

    async def edit(step: int, total: int, preview: bytes | None) -> None:
        for delivery in call:
            message_id = await delivery.message()
            if message_id is not None:
                await poster.show_progress(delivery.job, message_id, step, total, preview)

    return edit


def image_parameters(job: Job, seed: int, model_name: str, upscaled_by: str | None,
                     source_parameters: str | None = None, *, clip_skip: int = 1,
                     model_hash: str | None = None) -> str:
    """The AUTOMATIC1111-style parameters of one image, with what was done after sampling.
    An uploaded picture upscaled (`/upscale`) keeps its own (`source_parameters`), if any.
    `Clip skip` is written when above 1 and after `Denoising strength`, before the hires
    fix's own keys, in A1111's order (`modules/processing.py` `create_infotext`:
    `"Clip skip": None if clip_skip <= 1 else clip_skip`, then `extra_generation_params`)."""
    if job.kind is JobKind.UPSCALE and job.source_job_id is None:
        upscaler = f"Postprocess upscaler: {upscaled_by}" if upscaled_by else ""
        return ", ".join(p for p in (source_parameters, upscaler) if p)
    text = format_parameters(job, seed, model_name=model_name, model_hash=model_hash)
    if job.kind is JobKind.VARIATION:
        text += f", Denoising strength: {job.strength:g}"
    if job.hires is not None:
        text += f", Denoising strength: {job.hires.strength:g}"
    if clip_skip > 1:
        text += f", Clip skip: {clip_skip}"
    if job.hires is not None:  # as A1111 writes its hires fix; `Size` is the first pass's
        h = job.hires
        text += (f", Hires upscale: {h.scale(job.width):g}, "
                 f"Hires resize: {h.width}x{h.height}, Hires steps: {h.steps}, "
                 f"Hires upscaler: {HIRES_UPSCALER}")
    if upscaled_by:
        text += f", Postprocess upscaler: {upscaled_by}"
    return text


def model_parameters(config: Config, job: Job) -> dict[str, Any]:
    """What the parameters say about the job's model besides its name: its CLIP skip and the
    AutoV2 hash of its file (computed by the worker when the job used it)."""
    return {"clip_skip": config.model(job.model_id).clip_skip,
            "model_hash": MODEL_HASHES.known(job.model_id)}


def attachment_limit(config: Config, job: Job) -> int:
    """Bytes one file may have: the smaller of the configured limit and what Discord said with
    the interaction."""
    limit = config.worker.attachment_limit_bytes
    return min(limit, job.attachment_limit) if job.attachment_limit else limit


# Room left in a message request for its JSON and the multipart framing around the files.
_REQUEST_OVERHEAD_BYTES = 256 * 1024


def files_budget(config: Config) -> int:
    """Bytes all the files of one message may have together."""
    return config.worker.message_limit_bytes - _REQUEST_OVERHEAD_BYTES


def fitted_attachments(config: Config, job: Job, images: list[Image], notes: list[str],
                       upscaled_by: str | None, *,
                       total_limit: int | None = None,
                       checked: Checked | None = None) -> list[Attachment]:
    """Each image a PNG with its parameters, or smaller (WebP, then downscaled) where the PNG
    would not fit Discord's limit per file, or the files together the limit per message
    (`total_limit`, default `files_budget`); `notes` then say so. A picture the check
    withheld is its placeholder, without the parameters (Draw this has nothing to re-draw
    from it); one it spoilered is named `SPOILER_…`, which is how Discord covers a file."""
    model_name = config.model(job.model_id).name
    seeds = job.image_seeds()
    withheld = checked.withheld if checked is not None else frozenset()
    spoilered = checked.spoilered if checked is not None else frozenset()
    fitted_all = fit_images(
        [(image, "" if number in withheld else image_parameters(
            job, seed, model_name, upscaled_by, image.info.get(SOURCE_PARAMETERS),
            **model_parameters(config, job)))
         for number, (image, seed) in enumerate(zip(images, seeds, strict=True))],
        limit_bytes=attachment_limit(config, job),
        total_limit_bytes=files_budget(config) if total_limit is None else total_limit)
    attachments = []
    for number, (fitted, seed) in enumerate(zip(fitted_all, seeds, strict=True), 1):
        stem = f"pony_{job.id}_{seed}" + ("_upscaled" if upscaled_by else "")
        stem += "_withheld" if number - 1 in withheld else ""
        spoiler = "SPOILER_" if number - 1 in spoilered else ""
        attachments.append(Attachment(filename=spoiler + fitted.filename(stem),
                                      data=fitted.data))
        if fitted.note:
            notes.append(fitted.note if len(images) == 1 else f"image {number}: {fitted.note}")
    return attachments


def render_post(config: Config, job: Job, images: list[Image], *, elapsed_s: float,
                notes: list[str], upscaled_by: str | None,
                total_limit: int | None = None, checked: Checked | None = None) -> Post:
    """The result message that replaces the queued one. Blocking (encoding): call it off the
    event loop."""
    attachments = fitted_attachments(config, job, images, notes, upscaled_by,
                                     total_limit=total_limit, checked=checked)
    return Post(
        content=result_text(job, elapsed_s=elapsed_s, notes=notes),
        embed=result_embed(job, model_name=config.model(job.model_id).name,
                           upscaled_by=upscaled_by),
        attachments=attachments,
        # 🔁 U V 🗑: the bot answers the clicks (cogs/results.py).
        view=result_view(job, can_upscale=bool(config.upscalers)) if checked is None or
        not checked.hidden else checked_view(job, bool(config.upscalers), checked.hidden),
    )


def checked_view(job: Job, can_upscale: bool, hidden: frozenset[int]) -> discord.ui.View:
    """The result's buttons less U and V for the pictures the check kept out of the message:
    the other pictures of the batch keep theirs."""
    gone = {custom_id(action, job.id, i) for i in hidden for action in (Action.UPSCALE,
                                                                         Action.VARY)}
    return sent_view([b for b in result_buttons(job, can_upscale=can_upscale)
                      if b.custom_id not in gone])
