"""The queue's policy, on a real redis-server: positions, fairness across servers, pause, cancel,
caps, batching, loaded-model preference."""

from __future__ import annotations

import asyncio
import time

import pytest

from ponybot_core.job import Job
from ponybot_core.queue import Consumer, UserLimitReached
from ponybot_testkit.world import make_job
from tests.conftest import QueueParts

A, B, C = 100, 200, 300  # servers


def a_job(**overrides: object) -> Job:
    return make_job(**{"guild_id": A, **overrides})


async def take_ids(consumer: Consumer, n: int = 1, **kw: object) -> list[str]:
    return [d.job.id for d in await consumer.take(count=n, **kw)]  # type: ignore[arg-type]


async def drain(queue: QueueParts) -> list[Job]:
    consumer = queue.consumer()
    order = []
    while deliveries := await consumer.take(count=1):
        order.append(deliveries[0].job)
        await deliveries[0].posting()
        await deliveries[0].posted(1)
    return order


# --- positions and fairness ---------------------------------------------------------------------


async def test_positions_count_the_queued_jobs_ahead(queue):
    assert [(await queue.producer.enqueue(a_job())).position for _ in range(3)] == [1, 2, 3]
    await take_ids(queue.consumer())  # the first one starts running
    assert (await queue.producer.enqueue(a_job())).position == 3


async def test_one_busy_server_does_not_block_another_for_more_than_one_job(queue):
    for _ in range(10):
        await queue.producer.enqueue(a_job(guild_id=A))
    late = a_job(guild_id=B)
    assert (await queue.producer.enqueue(late)).position == 2
    order = await drain(queue)
    assert [j.guild_id for j in order[:3]] == [A, B, A]


async def test_servers_are_served_round_robin_and_each_fifo(queue):
    jobs = {g: [a_job(guild_id=g, seed=i) for i in range(3)] for g in (A, B, C)}
    for i in range(3):
        for g in (A, B, C):
            await queue.producer.enqueue(jobs[g][i])
    order = await drain(queue)
    assert [(j.guild_id, j.seed) for j in order] == [(g, i) for i in range(3) for g in (A, B, C)]


async def test_positions_match_the_order_jobs_will_run_in(queue):
    for g in (A, A, A, B, C, C):
        await queue.producer.enqueue(a_job(guild_id=g))
    positions = await queue.reads.positions()
    order = await drain(queue)
    assert [positions[j.id] for j in order] == list(range(1, 7))


async def test_direct_messages_are_one_more_tenant(queue):
    await queue.producer.enqueue(a_job(guild_id=A))
    await queue.producer.enqueue(a_job(guild_id=A))
    assert (await queue.producer.enqueue(a_job(guild_id=None))).position == 2


async def test_enqueueing_the_same_job_twice_queues_it_once(queue):
    """A retried enqueue (its first reply lost with the connection) must not double the job."""
    job = a_job()
    first = await queue.producer.enqueue(job)
    again = await queue.producer.enqueue(job)
    assert (first.position, again.position) == (1, 1)
    assert await take_ids(queue.consumer(), 5) == [job.id]


# --- pause ----------------------------------------------------------------------------------------


async def test_a_paused_server_keeps_its_jobs_while_others_flow(queue):
    held = a_job(guild_id=A)
    await queue.producer.enqueue(held)
    await queue.producer.pause(A)
    flowing = a_job(guild_id=B)
    assert (await queue.producer.enqueue(flowing)).position == 1
    assert (await queue.producer.enqueue(a_job(guild_id=A))).paused
    consumer = queue.consumer()
    assert await take_ids(consumer) == [flowing.id]
    assert await take_ids(consumer) == []
    await queue.producer.resume(A)
    assert await take_ids(consumer) == [held.id]


async def test_a_global_pause_holds_everything_until_resumed(queue):
    job = a_job(guild_id=B)
    await queue.producer.enqueue(job)
    await queue.producer.pause(None)
    consumer = queue.consumer()
    assert await take_ids(consumer) == []
    assert (await queue.producer.enqueue(a_job(guild_id=C))).paused
    assert await queue.reads.positions() == {}  # no position moves while everything waits
    await queue.producer.resume(None)
    assert await take_ids(consumer) == [job.id]


async def test_a_thousand_paused_servers_cost_the_others_nothing(queue):
    """Break 1: paused servers used to clog the take script's 64-entry look-ahead, so 64 paused
    servers with jobs stopped every worker while /pony elsewhere said "position 1"."""
    held = {}
    for g in range(1, 1001):
        held[g] = a_job(guild_id=g)
        await queue.producer.enqueue(held[g])
        await queue.producer.pause(g)
    elsewhere = a_job(guild_id=5000)
    enqueued = await queue.producer.enqueue(elsewhere)
    assert (enqueued.position, enqueued.paused) == (1, False)
    assert await queue.reads.positions() == {elsewhere.id: 1}
    consumer = queue.consumer()
    assert await take_ids(consumer, 4) == [elsewhere.id]
    assert await take_ids(consumer, 4) == []
    # Their jobs are all still there for the resume.
    await queue.producer.resume(7)
    assert await take_ids(consumer, 4) == [held[7].id]
    assert await queue.unfinished() == 999 + 2  # 999 still paused, 2 running


async def test_a_resumed_server_rejoins_the_rotation_behind_those_that_flowed(queue):
    jobs = [a_job(guild_id=A, seed=i) for i in range(3)]
    for job in jobs:
        await queue.producer.enqueue(job)
    await queue.producer.pause(A)
    other = a_job(guild_id=B)
    await queue.producer.enqueue(other)
    await queue.producer.resume(A)
    assert [j.id for j in await drain(queue)] == [other.id, *(j.id for j in jobs)]


# --- cancel, clear, limits ------------------------------------------------------------------------


async def test_cancelling_a_queued_job_removes_it_and_frees_the_users_slot(queue):
    doomed, kept = a_job(), a_job()
    await queue.producer.enqueue(doomed)
    await queue.producer.enqueue(kept)
    result = await queue.producer.cancel(doomed.id)
    assert result.was == "queued" and result.job == doomed
    assert await take_ids(queue.consumer(), 5) == [kept.id]
    assert await queue.reads.user_jobs(A, 5) == [kept.id]
    assert (await queue.reads.state(doomed.id)).status == "cancelled"


async def test_cancelling_a_running_job_asks_its_worker_to_stop(queue):
    job = a_job()
    await queue.producer.enqueue(job)
    consumer = queue.consumer()
    await take_ids(consumer)
    assert await consumer.cancel_requested([job.id]) == set()
    assert (await queue.producer.cancel(job.id)).was == "running"
    assert await consumer.cancel_requested([job.id]) == {job.id}


async def test_cancelling_the_last_queued_job_of_a_server_takes_it_out_of_the_rotation(queue):
    gone = a_job(guild_id=A)
    await queue.producer.enqueue(gone)
    await queue.producer.cancel(gone.id)
    job = a_job(guild_id=B)
    await queue.producer.enqueue(job)
    assert await take_ids(queue.consumer(), 5) == [job.id]
    assert await queue.unfinished() == 1


async def test_clear_cancels_one_users_queued_jobs_only(queue):
    mine = [a_job(user_id=7) for _ in range(2)]
    theirs = a_job(user_id=8)
    for job in [mine[0], theirs, mine[1]]:
        await queue.producer.enqueue(job)
    cleared = await queue.producer.clear(A, user_id=7)
    assert sorted(c.job.id for c in cleared if c.job) == sorted(j.id for j in mine)
    assert await take_ids(queue.consumer(), 5) == [theirs.id]


async def test_a_user_over_the_cap_is_refused_with_their_current_jobs(queue):
    first, second = a_job(), a_job()
    await queue.producer.enqueue(first, user_limit=2)
    await queue.producer.enqueue(second, user_limit=2)
    with pytest.raises(UserLimitReached) as refused:
        await queue.producer.enqueue(a_job(), user_limit=2)
    assert refused.value.job_ids == sorted([first.id, second.id])
    assert await queue.unfinished() == 2
    # The cap counts running jobs too, and a finished job frees its slot.
    [running] = await queue.consumer().take(count=1)
    with pytest.raises(UserLimitReached):
        await queue.producer.enqueue(a_job(), user_limit=2)
    await running.posting()
    await running.posted(1)
    await queue.producer.enqueue(a_job(), user_limit=2)
    # Caps are per server.
    await queue.producer.enqueue(a_job(guild_id=B), user_limit=1)


# --- taking: batching and model preference ------------------------------------------------------


async def test_compatible_jobs_are_taken_together_in_round_robin_order(queue):
    a1, b1, a2, a3 = (a_job(guild_id=g) for g in (A, B, A, A))
    for job in (a1, b1, a2, a3):
        await queue.producer.enqueue(job)
    assert await take_ids(queue.consumer(), 8) == [a1.id, b1.id, a2.id, a3.id]


async def test_batching_never_reorders_round_robin(queue):
    a1, b1, a2 = (a_job(guild_id=g) for g in (A, B, A))
    c1 = a_job(guild_id=C, steps=9)  # cannot share a pipeline call with the others
    for job in (a1, b1, a2, c1):
        await queue.producer.enqueue(job)
    consumer = queue.consumer()
    # Round-robin order is a1, b1, c1, a2: a batch stops where the next job is incompatible.
    assert await take_ids(consumer, 8) == [a1.id, b1.id]
    assert await take_ids(consumer, 8) == [c1.id]
    assert await take_ids(consumer, 8) == [a2.id]


async def test_a_worker_prefers_its_loaded_model_but_never_past_the_bound(queue):
    old = a_job(guild_id=A, model_id="v1")
    loaded = a_job(guild_id=B, model_id="v2")
    await queue.producer.enqueue(old)
    await queue.producer.enqueue(loaded)
    consumer = queue.consumer()
    assert await take_ids(consumer, preferred_models=["v2"],
                          max_preference_wait_s=60) == [loaded.id]
    await queue.producer.enqueue(a_job(guild_id=B, model_id="v2"))
    # `old` has now waited longer than the bound: round-robin wins.
    assert await take_ids(consumer, preferred_models=["v2"], max_preference_wait_s=0) == [old.id]


async def test_the_model_preference_reads_the_model_field_not_a_prefix(queue):
    """A model id is its own field: an id that is a prefix of another is not confused."""
    other = a_job(guild_id=A, model_id="v2-beta")
    mine = a_job(guild_id=B, model_id="v2")
    await queue.producer.enqueue(other)
    await queue.producer.enqueue(mine)
    assert await take_ids(queue.consumer(), preferred_models=["v2"],
                          max_preference_wait_s=60) == [mine.id]


async def test_a_job_is_delivered_to_one_worker_only(queue):
    jobs = [a_job(guild_id=g) for g in (A, B, C) * 4]
    for job in jobs:
        await queue.producer.enqueue(job)
    takes = await asyncio.gather(*(take_ids(queue.consumer(f"w{i}"), 2) for i in range(8)))
    assert sorted(i for ids in takes for i in ids) == sorted(j.id for j in jobs)


async def test_an_idle_worker_wakes_up_as_soon_as_a_job_arrives(queue):
    waiting = asyncio.create_task(queue.consumer().take(count=1, block_s=10))
    await asyncio.sleep(0.2)
    job = a_job()
    started = time.monotonic()
    await queue.producer.enqueue(job)
    [delivery] = await asyncio.wait_for(waiting, 5)
    assert delivery.job.id == job.id
    assert time.monotonic() - started < 2


async def test_the_job_round_trips_with_its_token_which_is_not_stored_with_it(queue):
    job = a_job(interaction_token="secret-token", count=3, seed=41)
    await queue.producer.enqueue(job)
    stored = await queue.redis.hget(queue.keys.job(job.id), "job")
    assert b"secret-token" not in stored
    # The token lives under its own key, only as long as Discord accepts it (15 min + margin).
    assert 15 * 60 < await queue.redis.ttl(queue.keys.token(job.id)) <= 16 * 60
    [delivery] = await queue.consumer().take(count=1)
    assert delivery.job.interaction_token == "secret-token"
    assert delivery.job.image_seeds() == [41, 42, 43]
    assert "secret-token" not in repr(delivery.job)


async def test_the_snapshot_shows_running_then_queued_in_order(queue):
    jobs = [a_job(guild_id=g) for g in (A, A, B)]
    for job in jobs:
        await queue.producer.enqueue(job)
    await queue.consumer().take(count=1)
    snap = await queue.reads.snapshot(A)
    assert [j.id for j, _, _ in snap.running] == [jobs[0].id]
    assert [(j.id, p) for j, p in snap.queued] == [(jobs[1].id, 2)]
    everything = await queue.reads.snapshot(all_guilds=True)
    assert [(j.id, p) for j, p in everything.queued] == [(jobs[2].id, 1), (jobs[1].id, 2)]


async def test_the_snapshot_lists_a_paused_servers_jobs_as_waiting(queue):
    held = a_job(guild_id=A)
    await queue.producer.enqueue(held)
    await queue.producer.pause(A)
    snap = await queue.reads.snapshot(A)
    assert [(j.id, p) for j, p in snap.queued] == [(held.id, 0)]
    assert snap.paused_guilds == {A}
