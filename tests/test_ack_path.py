"""`/pony` answers after two Redis round trips: one pipelined read (the user's, the channel's and
the server's saved settings, and the live workers' heartbeats) and the enqueue script. Every
round trip before the answer is time every user waits, and under a burst each one lets the
other commands' work in first. Counted where redis-py writes to its socket, against a real
Redis, real discord.py and the fake Discord (ponybot_testkit.round_trips).

The bot keeps the names of the workers it saw last so their heartbeats can be read in that same
round trip; the tests below show that a worker starting, stopping or disappearing is seen by
the very next `/pony`, as when every heartbeat was read afresh.
"""

from __future__ import annotations

import asyncio
import random
import time

from redis.asyncio import Redis

from bot.availability import WorkerRoster
from ponybot_core.config import LoadedConfig
from ponybot_core.heartbeat import (
    WorkerHeartbeat,
    last_beat_at,
    publish_heartbeat,
    read_heartbeats,
    remove_heartbeat,
)
from ponybot_core.keys import Keys
from ponybot_request import clip_tokens
from ponybot_testkit.fake_discord import FakeDiscord, FakeInteraction
from ponybot_testkit.round_trips import TaskTrips, recording
from ponybot_testkit.world import CHANNEL_ID, USER_ID, running_bot
from tests.conftest import pony

KEYS = Keys("ponybot")
ONE_READ = ("HGETALL", "HGETALL", "HGETALL", "ZRANGE", "MGET")
# More commands at once than redis-py's default pool has connections (100 since redis-py 8).
BURST = 120


async def worker_says(redis: Redis, name: str, *, serves: list[str], ttl_s: float = 60) -> None:
    beat = WorkerHeartbeat(name=name, host="gpu-box", device="cuda:0", serves=serves,
                           at=time.time())
    await publish_heartbeat(redis, KEYS, beat, ttl_s=ttl_s)


def said(itx: FakeInteraction) -> str:
    """What the answer to `itx` says."""
    assert itx.original is not None
    return itx.original.content


async def counted_pony(fake: FakeDiscord, **options: object) -> tuple[FakeInteraction, TaskTrips]:
    """One /pony, answered, with the round trips of its handler (to its end)."""
    with recording() as rec:
        itx = await pony(fake, **options)
        [handler] = rec.answered()
        await handler.finished()
    return itx, handler


async def test_a_pony_reads_redis_once_and_enqueues_once_before_it_answers(
        fake: FakeDiscord, bot: object, redis: Redis) -> None:
    await worker_says(redis, "gpu-a", serves=["tiny"])
    await counted_pony(fake)  # the first meets the workers and loads the enqueue script

    itx, trips = await counted_pony(fake)

    assert not itx.ephemeral
    assert trips.before_answer() == [ONE_READ, ("EVALSHA",)]
    # After the answer: the queued message recorded for the worker to edit.
    assert trips.after_answer() == [("EVALSHA",)]


async def test_a_pony_in_a_server_with_no_worker_alive_also_reads_once(
        fake: FakeDiscord, bot: object, redis: Redis) -> None:
    await counted_pony(fake)

    itx, trips = await counted_pony(fake)

    assert "No worker is running yet" in said(itx)
    assert trips.before_answer() == [("HGETALL", "HGETALL", "HGETALL", "ZRANGE"), ("EVALSHA",)]


async def test_a_worker_that_starts_after_the_last_pony_is_seen_by_the_next(
        fake: FakeDiscord, bot: object, redis: Redis) -> None:
    await worker_says(redis, "gpu-a", serves=["tiny"])
    refused = await pony(fake, model="tiny-v2")
    assert refused.ephemeral and "is not available right now" in said(refused)

    await worker_says(redis, "gpu-b", serves=["tiny-v2"])
    itx, trips = await counted_pony(fake, model="tiny-v2")

    assert not itx.ephemeral and "Tiny Pony V2" in said(itx)
    # The new name costs one more read, once.
    assert trips.before_answer() == [ONE_READ, ("MGET",), ("EVALSHA",)]
    _, trips = await counted_pony(fake, model="tiny-v2")
    assert trips.before_answer() == [ONE_READ, ("EVALSHA",)]


async def test_a_worker_that_stopped_is_gone_for_the_next_pony(
        fake: FakeDiscord, bot: object, redis: Redis) -> None:
    await worker_says(redis, "gpu-a", serves=["tiny"])
    await worker_says(redis, "gpu-b", serves=["tiny-v2"])
    assert not (await pony(fake, model="tiny-v2")).ephemeral

    await remove_heartbeat(redis, KEYS, "gpu-b")
    refused = await pony(fake, model="tiny-v2")

    assert refused.ephemeral and "is not available right now" in said(refused)
    await remove_heartbeat(redis, KEYS, "gpu-a")
    waiting = await pony(fake)
    assert not waiting.ephemeral
    assert "No worker is running (the last one was seen" in said(waiting)


async def test_a_worker_forgotten_from_the_roster_is_gone_for_the_next_pony(
        fake: FakeDiscord, bot: object, redis: Redis) -> None:
    """A name can leave the set of workers while its heartbeat key still lives (the set is
    trimmed by age): read from the set, as before, the worker is gone."""
    await worker_says(redis, "gpu-a", serves=["tiny"])
    await worker_says(redis, "gpu-b", serves=["tiny-v2"])
    assert not (await pony(fake, model="tiny-v2")).ephemeral

    await redis.zrem(KEYS.workers, "gpu-b")
    refused = await pony(fake, model="tiny-v2")

    assert refused.ephemeral and "is not available right now" in said(refused)


async def test_the_roster_reads_what_a_fresh_read_of_every_heartbeat_reads(redis: Redis) -> None:
    """Workers starting, beating, stopping, expiring and being forgotten in a shuffled order:
    after each change the roster (which reuses the names it saw last) reads exactly the
    workers and the last beat that reading every heartbeat afresh reads."""
    roster = WorkerRoster(KEYS)
    rng = random.Random(17)
    names = [f"gpu-{c}" for c in "abcde"]
    clock = 1_000_000.0
    for _ in range(80):
        name, change = rng.choice(names), rng.choice(["beat", "beat", "stop", "forget",
                                                       "expire"])
        clock += rng.uniform(0.5, 5)
        if change == "beat":
            beat = WorkerHeartbeat(name=name, host="gpu-box", device="cuda:0", at=clock,
                                   serves=rng.sample(["tiny", "tiny-v2"], rng.randint(0, 2)),
                                   jobs_done=rng.randint(0, 9))
            await publish_heartbeat(redis, KEYS, beat, ttl_s=60)
        elif change == "stop":
            await remove_heartbeat(redis, KEYS, name)
        elif change == "forget":
            await redis.zrem(KEYS.workers, name)
        else:  # the key's TTL ran out
            await redis.delete(KEYS.worker(name))

        workers = await roster.read(redis)

        fresh = await read_heartbeats(redis, KEYS)
        assert workers.beats == fresh
        if not fresh:
            assert workers.last_beat == await last_beat_at(redis, KEYS)


async def test_a_burst_of_commands_larger_than_the_redis_pool_is_queued_whole(
        fake: FakeDiscord, bot: object, redis: Redis) -> None:
    """More commands at once than the bot keeps Redis connections: they wait their turn for
    a connection instead of being told that the queue is unavailable."""
    await worker_says(redis, "gpu-a", serves=["tiny"])
    users = [USER_ID + 100 + i for i in range(BURST // 40)]  # the per-user cap is 50
    for user_id in users:
        fake.add_user(user_id, name=f"burst{user_id}")

    async def one(i: int) -> FakeInteraction:
        itx = await fake.invoke("pony", {"tags": f"pony, solo, {i}"}, channel_id=CHANNEL_ID,
                                user_id=users[i % len(users)])
        await itx.wait_response(timeout=30)
        return itx

    answered = await asyncio.gather(*(one(i) for i in range(BURST)))

    refused = [said(itx) for itx in answered if itx.ephemeral]
    assert refused == []
    assert len([key async for key in redis.scan_iter(match=KEYS.job("*"))]) == BURST


async def test_the_caption_tokenizer_is_loaded_before_the_first_command(
        settings: LoadedConfig, fake: FakeDiscord, redis: Redis) -> None:
    """Loading CLIP's vocabulary takes a fifth of a second: done on the first caption, the
    first user after every start, and every command that came with theirs, waited for it."""
    clip_tokens._tokenizer.cache_clear()

    async with running_bot(settings, fake):
        assert clip_tokens._tokenizer.cache_info().currsize == 1
