"""Nothing is lost or doubled whatever crashes: workers killed mid-sampling, Redis restarted,
Discord failing for a while."""

from __future__ import annotations

import asyncio
import random
import signal

import pytest

from ponybot_core.keys import Keys
from ponybot_testkit.redis_faults import restart
from ponybot_testkit.world import CHANNEL_ID
from tests.conftest import pony, spawn_worker, write_config_toml

pytestmark = pytest.mark.usefixtures("bot")


def posts_of(fake, itx) -> int:
    """How many messages show the job's result: the queued message once it carries the images
    (editing it again with the same result shows nothing new), plus any channel post replying
    to it."""
    def has_result(message) -> bool:
        return any(a.filename.startswith("pony_") for a in message.attachments)

    replies = [m for m in fake.channel_messages(CHANNEL_ID)
               if (m.message_reference or {}).get("message_id") == str(itx.original.id)]
    return int(has_result(itx.original)) + sum(1 for m in replies if has_result(m))


async def test_workers_killed_mid_sampling_20_times_still_post_every_job_exactly_once(
        fake, redis, redis_server, tiny_pipeline_dir, tmp_path):
    config = write_config_toml(tmp_path / "config.toml", tiny_pipeline_dir, fake,
                               max_attempts=100, lease_s=1.0, steps=60)
    jobs = [await pony(fake, seed=i, steps=60) for i in range(10)]
    keys = Keys()
    rng = random.Random(20)
    workers = {}
    spawned = 0
    kills = 0

    def spawn() -> None:
        nonlocal spawned
        name = f"chaos-{spawned}"
        spawned += 1
        workers[name] = spawn_worker(config, redis_server.url, name)

    for _ in range(3):
        spawn()
    try:
        while kills < 20 and not all(posts_of(fake, j) for j in jobs):
            # Kill a worker as soon as it is sampling, a random moment into the job.
            for job_key in await redis.keys(keys.job("*")):
                state = await redis.hgetall(job_key)
                name = state.get(b"worker", b"").decode()
                if state.get(b"status") == b"running" and name in workers:
                    await asyncio.sleep(rng.uniform(0.05, 0.4))
                    if await redis.hget(job_key, "status") != b"running":
                        continue
                    workers.pop(name).send_signal(signal.SIGKILL)
                    kills += 1
                    spawn()
                    break
            await asyncio.sleep(0.02)
        await fake.wait_for(lambda: all(j.original.attachments for j in jobs), timeout=240)
        # The last post's worker still has to record it and ack before the queue is empty.
        for _ in range(500):
            if await redis.xlen(keys.stream) == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        for process in workers.values():
            process.kill()
        for process in workers.values():
            await asyncio.to_thread(process.wait)

    assert kills == 20
    assert [posts_of(fake, j) for j in jobs] == [1] * len(jobs)
    assert await redis.xlen(keys.dead) == 0
    assert await redis.xlen(keys.stream) == 0


async def messages_recorded(redis, count: int) -> None:
    """Wait until the bot has recorded each queued message's id (right after answering)."""
    for _ in range(250):
        keys = await redis.keys(Keys().job("*"))
        if len(keys) == count and all([await redis.hexists(k, "message_id") for k in keys]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the bot did not record the queued messages")


async def test_a_redis_restart_loses_no_queued_job(fake, redis, redis_server, start_worker):
    jobs = [await pony(fake, seed=i) for i in range(3)]
    await messages_recorded(redis, 3)
    await asyncio.to_thread(restart, redis_server)
    await start_worker()
    await fake.wait_for(lambda: all(posts_of(fake, j) for j in jobs), timeout=60)
    assert [posts_of(fake, j) for j in jobs] == [1, 1, 1]
    assert all(j.original.attachments for j in jobs)


async def test_while_redis_is_down_pony_says_so_and_recovers_by_itself(fake, redis,
                                                                     redis_server):
    await asyncio.to_thread(redis_server.stop)
    try:
        down = await pony(fake)
        assert down.ephemeral and "queue is unavailable" in down.original.content
    finally:
        await asyncio.to_thread(redis_server.start)
    up = await pony(fake)
    assert not up.ephemeral and "Queued" in up.original.content


async def test_discord_failing_for_a_while_still_gets_every_result_once(fake, redis,
                                                                      start_worker):
    jobs = [await pony(fake, seed=i) for i in range(3)]
    fake.inject("PATCH", r"^/webhooks/", 500, count=2)
    fake.inject("PATCH", r"^/webhooks/", 429, count=2, retry_after=0.2)
    await start_worker()
    await fake.wait_for(lambda: all(j.original.attachments for j in jobs), timeout=90)
    statuses = [status for method, path, status in fake.requests
                if method == "PATCH" and path.startswith("/webhooks/")]
    assert statuses.count(500) == 2 and statuses.count(429) == 2
    assert [posts_of(fake, j) for j in jobs] == [1, 1, 1]


async def test_a_job_that_keeps_killing_its_workers_is_dead_lettered_and_its_user_told(
        fake, redis, start_worker):
    itx = await pony(fake, steps=60)
    [key] = await redis.keys(Keys().job("*"))
    for attempt in range(1, 4):  # max_attempts is 3
        worker = await start_worker(name=f"doomed-{attempt}")
        # Each crash must hit the job: wait for this worker's attempt, however slow the
        # machine (the previous worker's lease has to run out first).
        for _ in range(3000):
            if await redis.hget(key, "attempts") == str(attempt).encode():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"attempt {attempt} never started")
        worker.crash()
    await start_worker(name="survivor")  # reclaims it after the lease, for a 4th attempt

    await fake.wait_for(lambda: "could not be drawn" in itx.original.content, timeout=60)
    assert "failed 3 times" in itx.original.content
    # The user is told first, the queue second: wait for the dead letter itself.
    for _ in range(3000):
        if await redis.xlen(Keys().dead):
            break
        await asyncio.sleep(0.02)
    [(_, fields)] = await redis.xrange(Keys().dead)
    assert fields[b"reason"] == b"it failed 3 times"
    assert not itx.original.attachments
    assert await redis.xlen(Keys().stream) == 0
