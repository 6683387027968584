"""The queue's guarantees, on a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from core.job import Job
from core.jobqueue import JobQueue, UserLimitReached
from core.keys import Keys
from tests.conftest import make_job

KEYS = Keys("test")
A, B, C = 100, 200, 300  # servers


def a_job(**overrides: object) -> Job:
    return make_job(**{"guild_id": A, **overrides})



async def new_queue(redis: Redis, max_attempts: int = 3) -> JobQueue:
    queue = JobQueue(redis, KEYS, max_attempts=max_attempts, result_ttl_s=600)
    await queue.ensure_group()
    return queue


async def take_ids(queue: JobQueue, n: int = 1, consumer: str = "w", **kw: object) -> list[str]:
    return [d.job.id for d in await queue.take(consumer, count=n, **kw)]  # type: ignore[arg-type]


async def drain(queue: JobQueue) -> list[Job]:
    order = []
    while deliveries := await queue.take("w", count=1):
        order.append(deliveries[0].job)
        await queue.ack(deliveries[0])
    return order


# --- positions and fairness ---------------------------------------------------------------------


async def test_positions_count_the_queued_jobs_ahead(redis):
    queue = await new_queue(redis)
    assert [(await queue.enqueue(a_job())).position for _ in range(3)] == [1, 2, 3]
    await take_ids(queue)  # the first one starts running
    assert (await queue.enqueue(a_job())).position == 3


async def test_one_busy_server_does_not_block_another_for_more_than_one_job(redis):
    queue = await new_queue(redis)
    for _ in range(10):
        await queue.enqueue(a_job(guild_id=A))
    late = a_job(guild_id=B)
    assert (await queue.enqueue(late)).position == 2
    order = await drain(queue)
    assert [j.guild_id for j in order[:3]] == [A, B, A]


async def test_servers_are_served_round_robin_and_each_fifo(redis):
    queue = await new_queue(redis)
    jobs = {g: [a_job(guild_id=g, seed=i) for i in range(3)] for g in (A, B, C)}
    for i in range(3):
        for g in (A, B, C):
            await queue.enqueue(jobs[g][i])
    order = await drain(queue)
    assert [(j.guild_id, j.seed) for j in order] == [(g, i) for i in range(3) for g in (A, B, C)]


async def test_positions_match_the_order_jobs_will_run_in(redis):
    queue = await new_queue(redis)
    for g in (A, A, A, B, C, C):
        await queue.enqueue(a_job(guild_id=g))
    positions = await queue.positions()
    order = await drain(queue)
    assert [positions[j.id] for j in order] == list(range(1, 7))


async def test_direct_messages_are_one_more_tenant(redis):
    queue = await new_queue(redis)
    await queue.enqueue(a_job(guild_id=A))
    await queue.enqueue(a_job(guild_id=A))
    dm = a_job(guild_id=None)
    assert (await queue.enqueue(dm)).position == 2


# --- pause, cancel, clear, limits ---------------------------------------------------------------


async def test_a_paused_server_keeps_its_jobs_while_others_flow(redis):
    queue = await new_queue(redis)
    held = a_job(guild_id=A)
    await queue.enqueue(held)
    await queue.pause(A)
    flowing = a_job(guild_id=B)
    assert (await queue.enqueue(flowing)).position == 1
    assert (await queue.enqueue(a_job(guild_id=A))).paused
    assert await take_ids(queue) == [flowing.id]
    assert await take_ids(queue) == []
    await queue.resume(A)
    assert await take_ids(queue) == [held.id]


async def test_a_global_pause_holds_everything_until_resumed(redis):
    queue = await new_queue(redis)
    job = a_job(guild_id=B)
    await queue.enqueue(job)
    await queue.pause(None)
    assert await take_ids(queue) == []
    assert (await queue.enqueue(a_job(guild_id=C))).paused
    await queue.resume(None)
    assert await take_ids(queue) == [job.id]


async def test_cancelling_a_queued_job_removes_it_and_frees_the_users_slot(redis):
    queue = await new_queue(redis)
    doomed, kept = a_job(), a_job()
    await queue.enqueue(doomed)
    await queue.enqueue(kept)
    result = await queue.cancel(doomed.id)
    assert result.was == "queued" and result.job == doomed
    assert await take_ids(queue, 5) == [kept.id]
    assert await queue.user_jobs(A, 5) == [kept.id]
    assert (await queue.status(doomed.id))["status"] == "cancelled"


async def test_cancelling_a_running_job_asks_its_worker_to_stop(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await take_ids(queue)
    assert not await queue.cancel_requested(job.id)
    assert (await queue.cancel(job.id)).was == "running"
    assert await queue.cancel_requested(job.id)


async def test_cancelling_the_last_queued_job_of_a_server_takes_it_out_of_the_rotation(redis):
    queue = await new_queue(redis)
    gone = a_job(guild_id=A)
    await queue.enqueue(gone)
    await queue.cancel(gone.id)
    job = a_job(guild_id=B)
    await queue.enqueue(job)
    assert await take_ids(queue, 5) == [job.id]
    assert await queue.length() == 1


async def test_clear_cancels_one_users_queued_jobs_only(redis):
    queue = await new_queue(redis)
    mine = [a_job(user_id=7) for _ in range(2)]
    theirs = a_job(user_id=8)
    for job in [mine[0], theirs, mine[1]]:
        await queue.enqueue(job)
    cleared = await queue.clear(A, user_id=7)
    assert sorted(c.job.id for c in cleared if c.job) == sorted(j.id for j in mine)
    assert await take_ids(queue, 5) == [theirs.id]


async def test_a_user_over_the_cap_is_refused_with_their_current_jobs(redis):
    queue = await new_queue(redis)
    first, second = a_job(), a_job()
    await queue.enqueue(first, user_limit=2)
    await queue.enqueue(second, user_limit=2)
    with pytest.raises(UserLimitReached) as refused:
        await queue.enqueue(a_job(), user_limit=2)
    assert refused.value.job_ids == sorted([first.id, second.id])
    assert await queue.length() == 2
    # The cap counts running jobs too, and a finished job frees its slot.
    [running] = await queue.take("w", count=1)
    with pytest.raises(UserLimitReached):
        await queue.enqueue(a_job(), user_limit=2)
    await queue.ack(running)
    await queue.enqueue(a_job(), user_limit=2)
    # Caps are per server.
    await queue.enqueue(a_job(guild_id=B), user_limit=1)


# --- taking: batching and model preference ------------------------------------------------------


async def test_compatible_jobs_are_taken_together_in_round_robin_order(redis):
    queue = await new_queue(redis)
    a1, b1, a2, a3 = (a_job(guild_id=g) for g in (A, B, A, A))
    for job in (a1, b1, a2, a3):
        await queue.enqueue(job)
    assert await take_ids(queue, 8) == [a1.id, b1.id, a2.id, a3.id]


async def test_batching_never_reorders_round_robin(redis):
    queue = await new_queue(redis)
    a1, b1, a2 = (a_job(guild_id=g) for g in (A, B, A))
    c1 = a_job(guild_id=C, steps=9)  # cannot share a pipeline call with the others
    for job in (a1, b1, a2, c1):
        await queue.enqueue(job)
    # Round-robin order is a1, b1, c1, a2: a batch stops where the next job is incompatible.
    assert await take_ids(queue, 8) == [a1.id, b1.id]
    assert await take_ids(queue, 8) == [c1.id]
    assert await take_ids(queue, 8) == [a2.id]


async def test_a_worker_prefers_its_loaded_model_but_never_past_the_bound(redis):
    queue = await new_queue(redis)
    old = a_job(guild_id=A, model_id="v1")
    loaded = a_job(guild_id=B, model_id="v2")
    await queue.enqueue(old)
    await queue.enqueue(loaded)
    assert await take_ids(queue, preferred_models=["v2"], max_preference_wait_s=60) == [loaded.id]
    again = a_job(guild_id=B, model_id="v2")
    await queue.enqueue(again)
    # `old` has now waited longer than the bound: round-robin wins.
    assert await take_ids(queue, preferred_models=["v2"], max_preference_wait_s=0) == [old.id]


async def test_a_job_is_delivered_to_one_worker_only(redis):
    queue = await new_queue(redis)
    jobs = [a_job(guild_id=g) for g in (A, B, C) * 4]
    for job in jobs:
        await queue.enqueue(job)
    takes = await asyncio.gather(*(take_ids(queue, 2, consumer=f"w{i}") for i in range(8)))
    taken = [i for ids in takes for i in ids]
    assert sorted(taken) == sorted(j.id for j in jobs)


async def test_an_idle_worker_wakes_up_as_soon_as_a_job_arrives(redis):
    queue = await new_queue(redis)
    waiting = asyncio.create_task(queue.take("w", count=1, block_s=10))
    await asyncio.sleep(0.2)
    job = a_job()
    started = time.monotonic()
    await queue.enqueue(job)
    [delivery] = await asyncio.wait_for(waiting, 5)
    assert delivery.job.id == job.id
    assert time.monotonic() - started < 2


async def test_the_job_round_trips_with_its_token(redis):
    queue = await new_queue(redis)
    job = a_job(interaction_token="secret-token", count=3, seed=41)
    await queue.enqueue(job)
    [delivery] = await queue.take("w", count=1)
    assert delivery.job.interaction_token == "secret-token"
    assert delivery.job.image_seeds() == [41, 42, 43]
    assert "secret-token" not in repr(delivery.job)


# --- finishing, crashes, dead letters -----------------------------------------------------------


async def test_acked_jobs_leave_the_queue_and_keep_their_state_for_a_while(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    [delivery] = await queue.take("w", count=1)
    await queue.mark_posted(job.id, 77)
    await queue.ack(delivery, worker_seconds=1.5)
    assert await queue.length() == 0
    state = await queue.status(job.id)
    assert state["status"] == "posted" and state["result_message_id"] == "77"
    assert 0 < await redis.ttl(KEYS.job(job.id)) <= 600
    assert await queue.recent_job_seconds() == 1.5


async def test_a_dead_workers_job_is_reclaimed_after_its_lease(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await queue.take("dead-worker", count=1)  # and then it dies
    assert await queue.reclaim("survivor", min_idle_s=0.2, count=5) == []
    await asyncio.sleep(0.25)
    [again] = await queue.reclaim("survivor", min_idle_s=0.2, count=5)
    assert again.job.id == job.id and again.attempts == 2


async def test_renewing_the_lease_keeps_a_long_job_from_being_reclaimed(redis):
    queue = await new_queue(redis)
    await queue.enqueue(a_job())
    [delivery] = await queue.take("busy", count=1)
    for _ in range(3):
        await asyncio.sleep(0.1)
        await queue.renew("busy", [delivery.entry_id])
    assert await queue.reclaim("other", min_idle_s=0.2, count=5) == []


async def test_a_reclaimed_job_that_was_already_posted_is_flagged_so_it_is_not_posted_twice(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await queue.take("w1", count=1)
    await queue.mark_posted(job.id, 5)  # posted, then the worker died before XACK
    await asyncio.sleep(0.15)
    [again] = await queue.reclaim("w2", min_idle_s=0.1, count=5)
    assert again.already_posted


async def test_a_released_job_is_reclaimable_at_once(redis):
    queue = await new_queue(redis)
    await queue.enqueue(a_job())
    [delivery] = await queue.take("w", count=1)
    await queue.release("w", delivery)
    [again] = await queue.reclaim("w", min_idle_s=60, count=5)
    assert again.job.id == delivery.job.id and again.attempts == 2


async def test_dead_letters_keep_the_job_and_the_reason(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    [delivery] = await queue.take("w", count=1)
    await queue.dead_letter(delivery, "it failed 3 times")
    assert await queue.length() == 0
    [(_, fields)] = await redis.xrange(KEYS.dead)
    assert fields[b"job_id"].decode() == job.id
    assert (await queue.status(job.id))["status"] == "failed"
    assert await queue.user_jobs(A, 5) == []


async def test_an_unreadable_job_is_dead_lettered_not_retried_forever(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await redis.hset(KEYS.job(job.id), "job", '{"schema_version": 99}')
    assert await queue.take("w", count=1) == []
    assert await queue.length() == 0
    assert await redis.xlen(KEYS.dead) == 1


async def test_the_message_id_recorded_by_the_bot_reaches_the_worker(redis):
    queue = await new_queue(redis)
    job = a_job()
    await queue.enqueue(job)
    await queue.set_message(job.id, 123456)
    [delivery] = await queue.take("w", count=1)
    assert delivery.message_id == 123456


async def test_the_snapshot_shows_running_then_queued_in_order(redis):
    queue = await new_queue(redis)
    jobs = [a_job(guild_id=g) for g in (A, A, B)]
    for job in jobs:
        await queue.enqueue(job)
    await queue.take("w", count=1)
    snap = await queue.snapshot(A)
    assert [j.id for j, _, _ in snap.running] == [jobs[0].id]
    assert [(j.id, p) for j, p in snap.queued] == [(jobs[1].id, 2)]
    everything = await queue.snapshot(all_guilds=True)
    assert [(j.id, p) for j, p in everything.queued] == [(jobs[2].id, 1), (jobs[1].id, 2)]
