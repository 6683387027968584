"""The queue's guarantees on a real redis-server."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from core.config import Sampler
from core.job import Job
from core.jobqueue import JobQueue
from core.keys import Keys

KEYS = Keys("test")


def a_job(**overrides: object) -> Job:
    fields: dict[str, object] = dict(
        application_id=1, interaction_id=2, interaction_token="tok", guild_id=3, channel_id=4,
        user_id=5, model_id="tiny", tags="pony", prompt="pony", negative_prompt="", seed=1,
        steps=2, cfg=7.5, sampler=Sampler.DDIM, width=64, height=64,
    )
    fields.update(overrides)
    return Job.model_validate(fields)


async def new_queue(redis: Redis, max_attempts: int = 3) -> JobQueue:
    queue = JobQueue(redis, KEYS, max_attempts=max_attempts)
    await queue.ensure_group()
    return queue


async def test_positions_count_the_unfinished_jobs_ahead(redis):
    queue = await new_queue(redis)
    assert [await queue.enqueue(a_job()) for _ in range(3)] == [1, 2, 3]
    [first] = await queue.take("w", count=1, block_ms=10)
    await queue.ack(first, result_ttl_s=60)
    assert await queue.enqueue(a_job()) == 3


async def test_jobs_enqueued_before_any_worker_existed_are_delivered(redis):
    queue = JobQueue(redis, KEYS)
    await queue.redis.xadd(KEYS.stream, {"bootstrap": "1"})  # a stream without a group yet
    await queue.redis.delete(KEYS.stream)
    job = a_job()
    await JobQueue(redis, KEYS).enqueue(job)
    await queue.ensure_group()
    [delivery] = await queue.take("w", count=5, block_ms=10)
    assert delivery.job == job and delivery.attempts == 1


async def test_a_job_is_delivered_to_one_worker_only(redis):
    queue = await new_queue(redis)
    jobs = [a_job() for _ in range(6)]
    for job in jobs:
        await queue.enqueue(job)
    first, second = await asyncio.gather(
        queue.take("a", count=6, block_ms=10), queue.take("b", count=6, block_ms=10)
    )
    ids = [d.job.id for d in first + second]
    assert sorted(ids) == sorted(j.id for j in jobs)


async def test_the_job_round_trips_with_its_token(redis):
    queue = await new_queue(redis)
    job = a_job(interaction_token="secret-token", count=3, seed=41)
    await queue.enqueue(job)
    [delivery] = await queue.take("w", count=1, block_ms=10)
    assert delivery.job.interaction_token == "secret-token"
    assert delivery.job.image_seeds() == [41, 42, 43]
    assert "secret-token" not in repr(delivery.job)


async def test_acked_jobs_leave_the_stream_and_keep_their_state_for_a_while(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    [delivery] = await queue.take("w", count=1, block_ms=10)
    await queue.mark_posted(job.id, 77)
    await queue.ack(delivery, result_ttl_s=120)
    assert await queue.length() == 0
    state = await queue.status(job.id)
    assert state["status"] == "posted" and state["result_message_id"] == "77"
    assert 0 < await redis.ttl(KEYS.job(job.id)) <= 120


async def test_a_dead_workers_job_is_reclaimed_after_its_lease(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await queue.take("dead-worker", count=1, block_ms=10)  # and then it dies
    assert await queue.reclaim("survivor", min_idle_s=0.2, count=5) == []
    await asyncio.sleep(0.25)
    [again] = await queue.reclaim("survivor", min_idle_s=0.2, count=5)
    assert again.job.id == job.id and again.attempts == 2


async def test_renewing_the_lease_keeps_a_long_job_from_being_reclaimed(redis):
    queue = await new_queue(redis)
    await queue.enqueue(a_job())
    [delivery] = await queue.take("busy", count=1, block_ms=10)
    for _ in range(3):
        await asyncio.sleep(0.1)
        await queue.renew("busy", [delivery.entry_id])
    assert await queue.reclaim("other", min_idle_s=0.2, count=5) == []


async def test_a_reclaimed_job_that_was_already_posted_is_flagged_so_it_is_not_posted_twice(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await queue.take("w1", count=1, block_ms=10)
    await queue.mark_posted(job.id, 5)  # posted, then the worker died before XACK
    await asyncio.sleep(0.15)
    [again] = await queue.reclaim("w2", min_idle_s=0.1, count=5)
    assert again.already_posted


async def test_a_released_job_is_reclaimable_at_once(redis):
    queue = await new_queue(redis)
    await queue.enqueue(a_job())
    [delivery] = await queue.take("w", count=1, block_ms=10)
    await queue.release("w", delivery)
    [again] = await queue.reclaim("w", min_idle_s=60, count=5)
    assert again.job.id == delivery.job.id and again.attempts == 2


async def test_dead_letters_keep_the_job_and_the_reason(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    [delivery] = await queue.take("w", count=1, block_ms=10)
    await queue.dead_letter(delivery, "it failed 3 times", result_ttl_s=60)
    assert await queue.length() == 0
    [(_, fields)] = await redis.xrange(KEYS.dead)
    assert fields[b"job_id"].decode() == job.id
    assert (await queue.status(job.id))["status"] == "failed"


async def test_an_unreadable_job_is_dead_lettered_not_retried_forever(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await redis.hset(KEYS.job(job.id), "job", '{"schema_version": 99}')
    assert await queue.take("w", count=1, block_ms=10) == []
    assert await queue.length() == 0
    assert await redis.xlen(KEYS.dead) == 1


async def test_the_message_id_recorded_by_the_bot_reaches_the_worker(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await queue.set_message(job.id, 123456)
    [delivery] = await queue.take("w", count=1, block_ms=10)
    assert delivery.message_id == 123456
