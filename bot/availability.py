"""Can a running worker draw this job? Asked before anything is queued.

A job for a model whose files no worker has used to be queued, taken, failed and dead-lettered
before its user heard anything. Workers now say in their heartbeat which models and upscalers
they can use (`inference.inventory`, no weights loaded), so `/pony` and the result buttons are
refused at once, privately, when live workers exist and none of them can serve the job. With no
worker alive at all the job is queued anyway (one may be starting) and the queued message says
how long workers have been gone.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from bot.errors import UserFacingError
from ponybot_core.config import Config
from ponybot_core.heartbeat import WorkerHeartbeat, last_beat_at, read_heartbeats
from ponybot_core.job import Job, JobKind
from ponybot_core.keys import Keys


async def check_job(redis: Redis, keys: Keys, config: Config, job: Job) -> list[str]:
    """Notes for the queued message; raises UserFacingError when the live workers cannot draw
    `job` (nothing is queued then), QueueUnavailable when Redis cannot be asked."""
    beats = await read_heartbeats(redis, keys)
    last = None if beats else await last_beat_at(redis, keys)
    if not beats:
        return [no_worker_note(last)]
    refusal = why_not_served(job, beats, config)
    if refusal:
        raise UserFacingError(refusal)
    return []


def why_not_served(job: Job, beats: list[WorkerHeartbeat], config: Config) -> str | None:
    """Why no live worker can draw `job`, in words for its user; None if one can."""
    needs_model = job.kind is not JobKind.UPSCALE
    needs_upscaler = job.kind is JobKind.UPSCALE or job.upscale
    if any((not needs_model or b.can_serve(job.model_id)) and
           (not needs_upscaler or b.can_upscale()) for b in beats):
        return None
    if needs_model and not any(b.can_serve(job.model_id) for b in beats):
        name = _model_name(config, job.model_id)
        others = [f"`{m}`" for m in served_models(beats) if m != job.model_id]
        choose = (f" Available now: {', '.join(others)} (`model:` picks one)." if others
                  else "")
        return (f"The model **{name}** (`{job.model_id}`) is not available right now: no running "
                f"worker has its files (an admin can see why with `ponybot models`). Nothing "
                f"was queued.{choose}")
    if job.kind is JobKind.UPSCALE:
        return ("Upscaling is not available right now: no running worker has the upscaler's "
                "files. Nothing was queued.")
    return ("Upscaling is not available right now: no running worker that has this model also "
            "has the upscaler's files. Nothing was queued; ask again with `upscale:false` (it may "
            "come from your `/settings` or the channel's).")


def served_models(beats: list[WorkerHeartbeat]) -> list[str]:
    """Model ids at least one live worker can draw, in the order the workers list them."""
    seen: dict[str, None] = {}
    for beat in beats:
        for model_id in beat.serves or []:
            seen.setdefault(model_id)
    return list(seen)


def model_status(model_id: str, beats: list[WorkerHeartbeat]) -> str:
    """One phrase for `/model list`: can a live worker draw with this model?"""
    if not beats:
        return "no worker running"
    if any(b.can_serve(model_id) for b in beats):
        return "✅ available"
    return "⛔ not available: no running worker has its files"


def no_worker_note(last_beat: float | None, now: float | None = None) -> str:
    """The queued message's word when no worker is alive."""
    if last_beat is None:
        return "⚠️ No worker is running yet: your picture waits in the queue until one starts."
    gone = _duration(max(0.0, (now or time.time()) - last_beat))
    return (f"⚠️ No worker is running (the last one was seen {gone} ago): your picture waits in "
            "the queue until one starts.")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _model_name(config: Config, model_id: str) -> str:
    try:
        return config.model(model_id).name
    except KeyError:
        return model_id
