"""Can a running worker draw this job? Asked before anything is queued.

A job for a model whose files no worker has used to be queued, taken, failed and dead-lettered
before its user heard anything. Workers now say in their heartbeat which models and upscalers
they can use (`inference.models.inventory`, no weights read), so `/pony` and the result buttons are
refused at once, privately, when live workers exist and none of them can serve the job. With no
worker alive at all the job is queued anyway (one may be starting) and the queued message says
how long workers have been gone.

The heartbeats are read on every `/pony`, before it answers, so `WorkerRoster` reads them in the
round trip that reads the saved settings (`bot.submit.Submitter.read`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bot.errors import UserFacingError
from ponybot_core.config import Config
from ponybot_core.heartbeat import WorkerHeartbeat
from ponybot_core.job import Job, JobKind
from ponybot_core.keys import Keys


@dataclass(frozen=True)
class Workers:
    """The live workers, as their heartbeats say (sorted by name), and when any worker, live
    or gone, last beat (None: none ever did)."""

    beats: list[WorkerHeartbeat]
    last_beat: float | None


@dataclass(frozen=True)
class _Asked:
    start: int  # where the roster's replies begin in the pipeline's
    names: tuple[str, ...]  # whose heartbeat keys the pipeline reads


class WorkerRoster:
    """The live workers' heartbeats in one round trip, which can be one the caller makes anyway.

    A heartbeat is a key named after its worker, and the names are in a sorted set
    (ponybot_core.heartbeat): read afresh, that is two round trips, the names and then their
    keys. The roster remembers the names it saw last and reads their keys in the same pipeline
    as the set. The set is read every time, so what a caller gets is what a fresh read gives;
    only a name it has not seen yet costs a second read, once (workers start rarely). N bot
    processes each keep their own names: there is nothing to invalidate.
    """

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self._names: tuple[str, ...] = ()
        # The heartbeats parsed last, by their JSON: a burst of commands reads the same beats.
        self._parsed: dict[bytes, WorkerHeartbeat] = {}

    def ask(self, pipe: Pipeline) -> _Asked:
        """Queue the roster's reads on `pipe`; `answer` reads the replies."""
        asked = _Asked(len(pipe), self._names)
        pipe.zrange(self.keys.workers, 0, -1, withscores=True)
        if asked.names:
            pipe.mget([self.keys.worker(name) for name in asked.names])
        return asked

    async def answer(self, redis: Redis, asked: _Asked, replies: Sequence[Any]) -> Workers:
        """The workers, from the replies of the pipeline `ask` queued on (all of its replies);
        reads the heartbeats of names not asked for. Redis errors propagate."""
        roster: list[tuple[bytes, float]] = replies[asked.start]
        names = [name.decode() for name, _ in roster]
        raws: dict[str, bytes | None] = {}
        if asked.names:
            raws.update(zip(asked.names, replies[asked.start + 1], strict=True))
        if new := [name for name in names if name not in raws]:
            fresh = await redis.mget([self.keys.worker(n) for n in new])
            # redis-py types replies as str too (decode_responses); this client reads bytes.
            raws.update(zip(new, cast("list[bytes | None]", fresh), strict=True))
        self._names = tuple(names)
        parsed = {raw: self._parsed.get(raw) or WorkerHeartbeat.model_validate_json(raw)
                  for name in names if (raw := raws[name])}
        self._parsed = parsed
        # The set is ordered by time of last beat: its last score is the newest.
        return Workers(beats=sorted(parsed.values(), key=lambda b: b.name),
                       last_beat=float(roster[-1][1]) if roster else None)

    async def read(self, redis: Redis) -> Workers:
        async with redis.pipeline(transaction=False) as pipe:
            asked = self.ask(pipe)
            replies = await pipe.execute()
        return await self.answer(redis, asked, replies)


def check_job(workers: Workers, config: Config, job: Job) -> list[str]:
    """Notes for the queued message; raises UserFacingError when the live workers cannot draw
    `job` (nothing is queued then)."""
    if not workers.beats:
        return [no_worker_note(workers.last_beat)]
    refusal = why_not_served(job, workers.beats, config)
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
