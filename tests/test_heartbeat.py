"""Worker heartbeats in a real Redis: the live list comes from a sorted set (no SCAN of the
keyspace), expired beats drop out, and the last beat's time survives for "gone since"."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from ponybot_core.heartbeat import (
    FORGET_AFTER_S,
    WorkerHeartbeat,
    last_beat_at,
    publish_heartbeat,
    read_heartbeats,
    remove_heartbeat,
)
from ponybot_core.keys import Keys

KEYS = Keys("ponybot")


def beat(name: str, at: float | None = None, **fields: object) -> WorkerHeartbeat:
    return WorkerHeartbeat(name=name, host="box", device="cpu float32",
                           at=time.time() if at is None else at, **fields)  # type: ignore[arg-type]


async def test_live_workers_are_listed_sorted_by_name_with_their_reports(redis: Redis) -> None:
    await publish_heartbeat(redis, KEYS, beat("gpu-b", serves=["v2"]), ttl_s=30)
    await publish_heartbeat(redis, KEYS, beat("gpu-a", serves=["v1"], unavailable={
        "v2": "not found: /models/v2.ckpt"}), ttl_s=30)

    beats = await read_heartbeats(redis, KEYS)

    assert [b.name for b in beats] == ["gpu-a", "gpu-b"]
    assert beats[0].serves == ["v1"] and beats[0].unavailable == {
        "v2": "not found: /models/v2.ckpt"}


async def test_a_worker_that_stops_beating_drops_out_but_its_last_beat_is_remembered(
        redis: Redis) -> None:
    at = time.time()
    await publish_heartbeat(redis, KEYS, beat("gpu-a", at=at), ttl_s=0.2)
    await asyncio.sleep(0.3)

    assert await read_heartbeats(redis, KEYS) == []
    assert await last_beat_at(redis, KEYS) == at


async def test_a_stopping_worker_leaves_the_list_at_once(redis: Redis) -> None:
    at = time.time()
    await publish_heartbeat(redis, KEYS, beat("gpu-a", at=at), ttl_s=30)

    await remove_heartbeat(redis, KEYS, "gpu-a")

    assert await read_heartbeats(redis, KEYS) == []
    assert await last_beat_at(redis, KEYS) == at


async def test_only_workers_in_the_set_are_read_not_every_matching_key(redis: Redis) -> None:
    stray = beat("ghost")
    await redis.set(KEYS.worker("ghost"), stray.model_dump_json(), ex=30)

    assert await read_heartbeats(redis, KEYS) == []


async def test_workers_gone_for_a_day_are_forgotten(redis: Redis) -> None:
    now = time.time()
    await publish_heartbeat(redis, KEYS, beat("old", at=now - FORGET_AFTER_S - 60), ttl_s=1)
    await publish_heartbeat(redis, KEYS, beat("new", at=now), ttl_s=30)

    assert await redis.zrange(KEYS.workers, 0, -1) == [b"new"]


async def test_no_worker_ever_seen_means_no_last_beat(redis: Redis) -> None:
    assert await last_beat_at(redis, KEYS) is None


def test_a_worker_that_does_not_report_its_files_is_assumed_to_serve_everything() -> None:
    older = beat("gpu-a")  # serves / upscalers not reported

    assert older.can_serve("anything") and older.can_upscale()
    assert not beat("gpu-b", serves=["v1"]).can_serve("v2")
    assert not beat("gpu-c", upscalers=[]).can_upscale()
