"""What users read about a job, in one place: the queued message the bot sends and the result
the worker edits it into, so both processes word things the same way."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from core.job import Job

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


def queued_text(
    job: Job, *, position: int, model_name: str, notes: Sequence[str] = (), paused: bool = False
) -> str:
    if paused:
        ahead = "⏸️ the queue is paused here by an admin; your job waits for a resume"
    else:
        ahead = "next up" if position <= 1 else f"position **{position}** in the queue"
    lines = [
        f"🎨 Queued — {ahead} · model **{model_name}** · seed `{seeds_text(job)}`",
        "Prompt the model will see:",
        code_block(job.prompt),
    ]
    if job.negative_prompt:
        lines += ["Negative prompt:", code_block(job.negative_prompt, limit=400)]
    lines += [f"-# {note}" for note in notes[:5]]
    return "\n".join(lines)[:_CONTENT_LIMIT]


def result_text(job: Job, *, elapsed_s: float, notes: list[str] | None = None) -> str:
    lines = [f"<@{job.user_id}> here {'is your pony' if job.count == 1 else 'are your ponies'}"
             f" ({elapsed_s:.1f} s)"]
    lines += [f"-# {note}" for note in notes or []]
    return "\n".join(lines)[:_CONTENT_LIMIT]


def result_embed(job: Job, *, model_name: str) -> discord.Embed:
    embed = discord.Embed(title=job.tags[:250] or "pony", colour=discord.Colour.purple())
    embed.add_field(name="Prompt", value=code_block(job.prompt, limit=_FIELD_LIMIT - 10),
                    inline=False)
    if job.negative_prompt:
        embed.add_field(name="Negative prompt",
                        value=code_block(job.negative_prompt, limit=_FIELD_LIMIT - 10),
                        inline=False)
    embed.add_field(name="Model", value=model_name)
    embed.add_field(name="Seed", value=seeds_text(job))
    embed.add_field(name="Size", value=f"{job.width}×{job.height}")
    embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="CFG", value=f"{job.cfg:g}")
    embed.add_field(name="Sampler", value=job.sampler.value)
    embed.set_footer(text=f"job {job.id}")
    return embed


def failure_text(job: Job, reason: str) -> str:
    return (f"<@{job.user_id}> ❌ your pony could not be drawn: {reason}\n"
            f"-# job {job.id}")[:_CONTENT_LIMIT]


def cancelled_text(job: Job, *, by_admin: bool = False) -> str:
    who = "by a server admin" if by_admin else ""
    return f"🚫 Cancelled {who}".rstrip() + f" — `{job.tags[:200]}`\n-# job {job.id}"
