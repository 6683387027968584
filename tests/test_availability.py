"""A job no running worker can draw is refused at once, privately, and nothing is queued; with
no worker alive the job is queued and its message says for how long workers have been gone.
Real discord.py against the fake Discord, real Redis, workers as their heartbeats say (and one
real worker for the result buttons and for what a worker publishes at start)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from redis.asyncio import Redis

from bot.availability import no_worker_note, why_not_served
from ponybot_core.config import Config, LoadedConfig
from ponybot_core.custom_ids import Action, custom_id
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.heartbeat import WorkerHeartbeat, publish_heartbeat, read_heartbeats
from ponybot_core.job import JobKind
from ponybot_core.keys import Keys
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, USER_ID, make_job

KEYS = Keys("ponybot")


async def worker_says(redis: Redis, name: str, *, at: float | None = None, ttl_s: float = 30,
                      **fields: object) -> None:
    beat = WorkerHeartbeat(name=name, host="gpu-box", device="cuda:0",
                           at=time.time() if at is None else at, **fields)  # type: ignore[arg-type]
    await publish_heartbeat(redis, KEYS, beat, ttl_s=ttl_s)


async def pony(fake, **options):
    options.setdefault("tags", "twilight sparkle, solo")
    itx = await fake.invoke("pony", options, guild_id=GUILD_ID, channel_id=CHANNEL_ID,
                            user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def jobs_in(redis: Redis) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=KEYS.job("*"))]


async def test_pony_for_a_model_no_running_worker_has_is_refused_and_nothing_is_queued(
        fake, bot, redis: Redis) -> None:
    await worker_says(redis, "gpu-a", serves=["tiny"],
                      unavailable={"tiny-v2": "not found: /srv/models/v2.ckpt"})

    itx = await pony(fake, model="tiny-v2")

    assert itx.ephemeral
    assert itx.original.content == (
        "The model **Tiny Pony V2** (`tiny-v2`) is not available right now: no running worker "
        "has its files (an admin can see why with `ponybot models`). Nothing was queued. "
        "Available now: `tiny` (`model:` picks one).")
    assert await jobs_in(redis) == []


async def test_pony_for_a_model_a_worker_has_is_queued_without_a_warning(fake, bot,
                                                                         redis: Redis) -> None:
    await worker_says(redis, "gpu-a", serves=["tiny"])

    itx = await pony(fake, model="tiny")

    assert not itx.ephemeral and "Tiny Pony" in itx.original.content
    assert "No worker" not in itx.original.content
    assert len(await jobs_in(redis)) == 1


async def test_with_no_worker_alive_the_job_waits_and_the_message_says_since_when(
        fake, bot, redis: Redis) -> None:
    await worker_says(redis, "gpu-a", at=time.time() - 600, ttl_s=0.1, serves=["tiny"])
    await asyncio.sleep(0.2)

    itx = await pony(fake)

    assert not itx.ephemeral
    assert "No worker is running (the last one was seen 10 min ago)" in itx.original.content
    assert len(await jobs_in(redis)) == 1


async def test_model_list_marks_each_model_available_or_not(fake, bot, redis: Redis) -> None:
    await worker_says(redis, "gpu-a", serves=["tiny"], unavailable={"tiny-v2": "not found"})

    itx = await fake.invoke("model list", {}, user_id=USER_ID, channel_id=CHANNEL_ID)
    await itx.wait_response(timeout=5)

    lines = itx.original.content.splitlines()
    tiny = next(i for i, line in enumerate(lines) if "`tiny`" in line)
    v2 = next(i for i, line in enumerate(lines) if "`tiny-v2`" in line)
    assert lines[tiny + 1].endswith("✅ available")
    assert lines[v2 + 1].endswith("⛔ not available: no running worker has its files")


async def test_a_result_button_for_a_model_no_running_worker_has_is_refused(
        fake, bot, redis: Redis, start_worker) -> None:
    running = await start_worker("gpu-1")
    first = await pony(fake)
    await fake.wait_for(lambda: first.original.embeds, timeout=30)
    running.worker.stop()
    await asyncio.wait_for(running.task, 20)
    await worker_says(redis, "gpu-2", serves=["tiny-v2"])
    jobs_before = await jobs_in(redis)
    job_id = first.original.embeds[0]["footer"]["text"].removeprefix("job ")

    click = await fake.click(first.original.id, custom_id(Action.REROLL, job_id),
                             user_id=USER_ID)
    await click.wait_response(timeout=5)

    assert click.ephemeral
    assert "**Tiny Pony** (`tiny`) is not available right now" in click.original.content
    assert await jobs_in(redis) == jobs_before


async def test_a_worker_publishes_which_models_it_can_serve_from_its_first_beat(
        fake, redis: Redis, settings: LoadedConfig, start_worker, tmp_path: Path) -> None:
    use_endpoints(settings.config.discord)  # the worker logs in to the fake Discord
    gone = {"id": "gone", "name": "Gone", "path": str(tmp_path / "gone"), "hub_repo": "a/b"}
    config = Config.model_validate({**settings.config.model_dump(),
                                    "models": [*settings.config.model_dump()["models"], gone]})
    await start_worker("gpu-1", settings.model_copy(update={"config": config}))

    await fake.wait_for(lambda: redis.exists(KEYS.worker("gpu-1")), timeout=20,
                        message="the worker's first heartbeat")

    [beat] = await read_heartbeats(redis, KEYS)

    assert beat.serves == ["tiny", "tiny-v2"]
    assert beat.unavailable == {"gone": f"not found: {tmp_path / 'gone'}"}
    assert beat.upscalers == []


def test_upscaling_is_refused_when_no_worker_has_an_upscaler(tiny_pipeline_dir: Path) -> None:
    from ponybot_testkit.world import tiny_config

    config = tiny_config(tiny_pipeline_dir)
    beats = [WorkerHeartbeat(name="a", host="h", device="cpu", at=0, serves=["tiny"],
                             upscalers=[])]

    upscale = make_job(kind=JobKind.UPSCALE, source_job_id="x", source_index=0)
    asked = make_job(upscale=True)

    assert why_not_served(make_job(), beats, config) is None
    assert why_not_served(upscale, beats, config) == (
        "Upscaling is not available right now: no running worker has the upscaler's files. "
        "Nothing was queued.")
    assert why_not_served(asked, beats, config) is not None
    assert "ask again with `upscale:false`" in (why_not_served(asked, beats, config) or "")


def test_the_no_worker_note_says_how_long_ago_in_words() -> None:
    assert no_worker_note(None).startswith("⚠️ No worker is running yet")
    assert "seen 45 s ago" in no_worker_note(1000.0, now=1045.0)
    assert "seen 3 h ago" in no_worker_note(0.0, now=3 * 3600.0)
    assert "seen 3 days ago" in no_worker_note(0.0, now=3 * 86400.0)
