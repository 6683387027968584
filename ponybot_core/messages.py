"""What users read about a job, in one place: the queued message the bot sends and the result
the worker edits it into (with its buttons), so both processes word things the same way."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from ponybot_core.custom_ids import SentButton, queued_buttons, result_buttons
from ponybot_core.job import Job, JobKind

# Discord caps message content at 2000 characters and an embed description at 4096.
_CONTENT_LIMIT = 2000
_FIELD_LIMIT = 1024


def code_block(text: str, limit: int = 900) -> str:
    """`text` in a Discord code block, shown exactly: markdown and mentions are inert inside
    one, and a zero-width space after every backtick keeps the text from closing it."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    body = text.replace("`", "`\u200b") or "\u200b"
    return f"```\n{body}\n```"


def seeds_text(job: Job) -> str:
    seeds = job.image_seeds()
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"


def source_text(job: Job) -> str:
    """Which earlier image (or uploaded picture) an upscale or a variation starts from."""
    if job.source_job_id is None and job.source_upload is not None:
        name = job.source_upload.filename.replace("`", "'")[:100]
        return f"your picture `{name}`"
    index = (job.source_index or 0) + 1
    return f"image {index} of job `{job.source_job_id}`"


def _upscales_an_upload(job: Job) -> bool:
    """`/upscale`: no prompt, model or seed to speak of."""
    return job.kind is JobKind.UPSCALE and job.source_job_id is None


def _queued_headline(job: Job) -> str:
    if job.kind is JobKind.UPSCALE:
        return f"🔍 Upscale of {source_text(job)} queued"
    if job.kind is JobKind.VARIATION:
        return f"🎲 Variation of {source_text(job)} queued"
    return "🎨 Queued"


def queued_text(
    job: Job, *, position: int, model_name: str, notes: Sequence[str] = (), paused: bool = False
) -> str:
    if paused:
        ahead = "⏸️ the queue is paused here by an admin; your job waits for a resume"
    else:
        ahead = "next up" if position <= 1 else f"position **{position}** in the queue"
    if _upscales_an_upload(job):
        return "\n".join([f"{_queued_headline(job)} — {ahead}", *[f"-# {n}" for n in notes[:5]]])
    lines = [
        f"{_queued_headline(job)} — {ahead} · model **{model_name}** · seed `{seeds_text(job)}`",
        "Prompt the model will see:",
        code_block(job.prompt),
    ]
    if job.negative_prompt:
        lines += ["Negative prompt:", code_block(job.negative_prompt, limit=400)]
    if job.hires is not None:
        lines.append(f"-# {hires_text(job)}")
    lines += [f"-# {note}" for note in notes[:5]]
    return "\n".join(lines)[:_CONTENT_LIMIT]


def hires_text(job: Job) -> str:
    """What a hires job does, and what it costs: the queue's ETAs count it the same way."""
    assert job.hires is not None
    h = job.hires
    return (f"⬆️ hires: drawn at {job.width}×{job.height}, then enlarged to {h.width}×{h.height} "
            f"and refined (strength {h.strength:g}, {h.denoising_steps} steps): about "
            f"{job.work_units():.1f}× the time of a plain picture")


def size_text(job: Job) -> str:
    if job.hires is None:
        return f"{job.width}×{job.height}"
    return f"{job.hires.width}×{job.hires.height} (hires from {job.width}×{job.height})"


def result_text(job: Job, *, elapsed_s: float, notes: Sequence[str] = ()) -> str:
    """The result's first lines; `notes` say what the user should know (a long prompt encoded
    in chunks, a file re-encoded to fit Discord's limit, ...)."""
    if job.kind is JobKind.UPSCALE:
        what = f"is your upscale of {source_text(job)}"
    elif job.kind is JobKind.VARIATION:
        what = f"is your variation of {source_text(job)}"
    else:
        what = "is your pony" if job.count == 1 else "are your ponies"
    lines = [f"<@{job.user_id}> here {what} ({elapsed_s:.1f} s)"]
    lines += [f"-# {note}" for note in notes]
    return "\n".join(lines)[:_CONTENT_LIMIT]


def result_embed(job: Job, *, model_name: str, upscaled_by: str | None = None) -> discord.Embed:
    """The parameters, for reading and for re-using; `upscaled_by` names the upscaler the
    images went through (`Tiny ESRGAN ×4`)."""
    if _upscales_an_upload(job):
        embed = discord.Embed(title="Upscale", colour=discord.Colour.purple())
        embed.add_field(name="Upscale of", value=source_text(job))
        if upscaled_by:
            embed.add_field(name="Upscaled", value=upscaled_by)
        return embed.set_footer(text=f"job {job.id}")
    embed = discord.Embed(title=job.tags[:250] or "pony", colour=discord.Colour.purple())
    embed.add_field(name="Prompt", value=code_block(job.prompt, limit=_FIELD_LIMIT - 10),
                    inline=False)
    if job.negative_prompt:
        embed.add_field(name="Negative prompt",
                        value=code_block(job.negative_prompt, limit=_FIELD_LIMIT - 10),
                        inline=False)
    embed.add_field(name="Model", value=model_name)
    embed.add_field(name="Seed", value=seeds_text(job))
    embed.add_field(name="Size", value=size_text(job))
    embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="CFG", value=f"{job.cfg:g}")
    embed.add_field(name="Sampler", value=job.sampler.value)
    if job.kind is JobKind.VARIATION:
        embed.add_field(name="Variation of", value=source_text(job))
        embed.add_field(name="Strength", value=f"{job.strength:g}")
    if job.kind is JobKind.UPSCALE:
        embed.add_field(name="Upscale of", value=source_text(job))
    if upscaled_by:
        embed.add_field(name="Upscaled", value=upscaled_by)
    embed.set_footer(text=f"job {job.id}")
    return embed


class _SentView(discord.ui.View):
    """Buttons sent but never answered through this view: the bot's DynamicItems match their
    custom_ids (ponybot_core.custom_ids), so discord.py must not keep the view waiting for
    clicks (the worker has no handler at all; the bot's are registered by its cogs)."""

    def is_dispatchable(self) -> bool:
        return False


def sent_view(buttons: Sequence[SentButton]) -> discord.ui.View:
    """A message's buttons, as both processes send them."""
    view = _SentView(timeout=None)
    for button in buttons:
        view.add_item(discord_button(button))
    return view


def discord_button(button: SentButton) -> discord.ui.Button[discord.ui.View]:
    """A table entry's button (ponybot_core.custom_ids) as discord.py sends it."""
    return discord.ui.Button(custom_id=button.custom_id, label=button.label, emoji=button.emoji,
                             row=button.row, style=discord.ButtonStyle[button.style.value])


def result_view(job: Job, *, can_upscale: bool) -> discord.ui.View:
    """The result's buttons: U1–Un, V1–Vn, 🔁 Re-roll, ✏️ Edit, ⬆️ Hires, 🗑 Delete."""
    return sent_view(result_buttons(job, can_upscale=can_upscale))


def queued_view(job_id: str) -> discord.ui.View:
    """The queued message's buttons: ✖️ Cancel, ✏️ Edit."""
    return sent_view(queued_buttons(job_id))


def failure_text(job: Job, reason: str) -> str:
    what = {JobKind.UPSCALE: "your upscale could not be made",
            JobKind.VARIATION: "your variation could not be drawn"}.get(
        job.kind, "your pony could not be drawn")
    return f"<@{job.user_id}> ❌ {what}: {reason}\n-# job {job.id}"[:_CONTENT_LIMIT]


def cancelled_text(job: Job, *, by_admin: bool = False) -> str:
    who = "by a server admin" if by_admin else ""
    return f"🚫 Cancelled {who}".rstrip() + f" — `{job.tags[:200]}`\n-# job {job.id}"


def lost_text(job: Job) -> str:
    # Said privately and without touching the job's message: the bot cannot see whether a
    # worker still had the job when Redis forgot it.
    return (f"⚠️ The queue restarted and lost track of your job `{job.tags[:200]}`: if no "
            f"picture appears for it, please ask again.\n-# job {job.id}")[:_CONTENT_LIMIT]


def progress_text(job: Job, step: int, total: int) -> str:
    filled = round(10 * step / max(total, 1))
    bar = "▰" * filled + "▱" * (10 - filled)
    return (f"🎨 Drawing — sampling {step}/{total} {bar}\n"
            f"{code_block(job.prompt)}")[:_CONTENT_LIMIT]
