"""A job's life on a real redis-server: every move a compare-and-set along the legal moves,
leases that keep a live worker's jobs its own, takeovers of a dead worker's jobs, and a queue
that survives Redis coming back empty."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ponybot_core.job import Job
from ponybot_core.queue import Delivery, JobStatus, Outcome
from ponybot_core.queue.state import LEGAL
from ponybot_testkit.world import make_job
from tests.conftest import QueueParts

A, B = 100, 200


def a_job(**overrides: object) -> Job:
    return make_job(**{"guild_id": A, **overrides})


async def taken(queue: QueueParts, consumer: str = "w", **job: object) -> Delivery:
    await queue.producer.enqueue(a_job(**job))
    [delivery] = await queue.consumer(consumer).take(count=1)
    return delivery


async def status(queue: QueueParts, job_id: str) -> JobStatus | None:
    state = await queue.reads.state(job_id)
    return state.status if state else None


# --- the legal moves ----------------------------------------------------------------------------


def test_posting_and_posted_are_never_downgraded():
    assert JobStatus.QUEUED not in LEGAL[JobStatus.POSTING]
    assert JobStatus.RUNNING not in LEGAL[JobStatus.POSTING]
    assert LEGAL[JobStatus.POSTED] == frozenset()


@pytest.mark.parametrize(("before", "after"), list(itertools.product(JobStatus, JobStatus)))
async def test_the_transition_script_allows_exactly_the_legal_moves(queue, before, after):
    delivery = await taken(queue)
    await queue.redis.hset(queue.keys.job(delivery.job_id), "status", before.value)
    outcome = await delivery._move(after)
    if before is after:
        assert outcome is Outcome.SAME
    elif after in LEGAL[before]:
        assert outcome is Outcome.OK
    else:
        assert outcome is Outcome.ILLEGAL
        assert await status(queue, delivery.job_id) is before


# --- finishing ----------------------------------------------------------------------------------


async def test_posted_records_the_message_and_acknowledges_in_one_step(queue):
    delivery = await taken(queue)
    assert await delivery.posting() is Outcome.OK
    assert await delivery.posted(77, worker_seconds=1.5) is Outcome.OK
    assert await queue.unfinished() == 0
    state = await queue.reads.state(delivery.job_id)
    assert state.status is JobStatus.POSTED and state.result_message_id == 77
    assert await queue.redis.xlen(queue.keys.stream) == 0
    assert 0 < await queue.redis.ttl(queue.keys.job(delivery.job_id)) <= 600
    assert await queue.reads.recent_job_seconds() == 1.5
    assert await queue.reads.user_jobs(A, 5) == []


async def test_a_repeated_move_whose_first_reply_was_lost_finds_its_work_done(queue):
    delivery = await taken(queue)
    await delivery.posting()
    assert await delivery.posted(5) is Outcome.OK
    assert await delivery.posted(5) is Outcome.SAME
    assert await delivery.retry() is Outcome.ILLEGAL  # posted stays posted
    assert await status(queue, delivery.job_id) is JobStatus.POSTED


async def test_a_job_cannot_be_posted_without_being_marked_posting_first(queue):
    delivery = await taken(queue)
    assert await delivery.posted(5) is Outcome.ILLEGAL
    assert await status(queue, delivery.job_id) is JobStatus.RUNNING


async def test_dead_letters_keep_the_job_and_the_reason_and_are_bounded(queue):
    delivery = await taken(queue)
    assert await delivery.give_up("it failed 3 times") is Outcome.OK
    assert await queue.unfinished() == 0
    [(_, fields)] = await queue.redis.xrange(queue.keys.dead)
    assert fields[b"job_id"].decode() == delivery.job_id
    assert fields[b"reason"] == b"it failed 3 times"
    assert await status(queue, delivery.job_id) is JobStatus.DEAD
    assert await queue.reads.user_jobs(A, 5) == []
    info = await queue.redis.xinfo_stream(queue.keys.dead)
    assert info["length"] == 1  # trimmed with MAXLEN ~ (see DEAD_LETTERS_KEPT)


async def test_an_unreadable_job_is_dead_lettered_not_retried_forever(queue):
    job = a_job()
    await queue.producer.enqueue(job)
    await queue.redis.hset(queue.keys.job(job.id), "job", '{"schema_version": 99}')
    assert await queue.consumer().take(count=1) == []
    assert await queue.unfinished() == 0
    assert await queue.redis.xlen(queue.keys.dead) == 1


async def test_the_message_id_recorded_by_the_bot_reaches_the_worker(queue):
    job = a_job()
    await queue.producer.enqueue(job)
    await queue.producer.record_message(job.id, 123456, position=1)
    [delivery] = await queue.consumer().take(count=1)
    assert delivery.message_id == 123456


async def test_recording_a_message_never_resurrects_a_vanished_job(queue):
    await queue.producer.record_message("gone", 1, position=1)
    assert not await queue.redis.exists(queue.keys.job("gone"))


# --- retries ------------------------------------------------------------------------------------


async def test_a_job_given_back_goes_to_the_front_of_its_server_and_is_charged_at_take(queue):
    first = await taken(queue)
    later = a_job()
    await queue.producer.enqueue(later)
    assert await first.retry() is Outcome.OK
    assert await status(queue, first.job_id) is JobStatus.QUEUED
    assert await queue.redis.xlen(queue.keys.stream) == 0
    [again] = await queue.consumer("other").take(count=1)
    assert (again.job_id, again.attempts) == (first.job_id, 2)
    # The first worker's lease ended with the give-back: it can no longer move the job.
    assert await first.posting() is Outcome.LOST


async def test_a_job_given_back_respects_its_servers_pause(queue):
    delivery = await taken(queue)
    await queue.producer.pause(A)
    await delivery.retry()
    other = a_job(guild_id=B)
    await queue.producer.enqueue(other)
    consumer = queue.consumer()
    assert [d.job_id for d in await consumer.take(count=5)] == [other.id]
    await queue.producer.resume(A)
    assert [d.job_id for d in await consumer.take(count=5)] == [delivery.job_id]


# --- leases and takeovers -------------------------------------------------------------------------


async def test_a_dead_workers_job_is_taken_over_after_its_lease(queue):
    dead = await taken(queue, "dead-worker")
    survivor = queue.consumer("survivor", lease_s=0.2)
    assert await survivor.reclaim(count=5) == []
    await asyncio.sleep(0.25)
    [again] = await survivor.reclaim(count=5)
    assert (again.job_id, again.attempts, again.status) == (dead.job_id, 2, JobStatus.RUNNING)
    # The dead worker, were it only slow, can no longer move the job.
    assert await dead.posting() is Outcome.LOST
    assert await again.posting() is Outcome.OK


async def test_one_renewal_keeps_every_job_a_worker_holds(queue):
    """Break 3: only the group being drawn had its lease renewed; the others of the same take
    were taken over by another worker and drawn twice."""
    for _ in range(3):
        await queue.producer.enqueue(a_job())
    busy = queue.consumer("busy", lease_s=0.3)
    held = await busy.take(count=3)
    assert len(held) == 3
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await busy.renew(held) == []
    assert await queue.consumer("other", lease_s=0.3).reclaim(count=5) == []


async def test_a_renewal_never_takes_a_job_back_from_the_worker_that_took_it_over(queue):
    slow = await taken(queue, "slow")
    await asyncio.sleep(0.15)
    [mine] = await queue.consumer("other", lease_s=0.1).reclaim(count=5)
    assert await queue.consumer("slow").renew([slow]) == [slow]
    assert slow.lost.is_set()
    pending = await queue.redis.xpending_range(queue.keys.stream, "workers", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"other"]
    assert await mine.posting() is Outcome.OK


async def test_a_job_taken_over_while_posting_stays_posting(queue):
    """Break 2: a takeover turned `posting` back into `running`, and the job was drawn and
    posted again. It stays `posting`: the new worker asks Discord before drawing it."""
    delivery = await taken(queue, "w1")
    await delivery.posting()
    await asyncio.sleep(0.15)
    [again] = await queue.consumer("w2", lease_s=0.1).reclaim(count=5)
    assert again.status is JobStatus.POSTING
    assert await status(queue, delivery.job_id) is JobStatus.POSTING
    assert await again.retry() is Outcome.ILLEGAL
    assert await again.posted(9) is Outcome.OK


async def test_a_paused_servers_job_taken_over_waits_for_the_resume(queue):
    dead = await taken(queue, "dead")
    await queue.producer.pause(A)
    await asyncio.sleep(0.15)
    survivor = queue.consumer("survivor", lease_s=0.1)
    assert await survivor.reclaim(count=5) == []
    assert await status(queue, dead.job_id) is JobStatus.QUEUED
    assert await survivor.take(count=5) == []
    await queue.producer.resume(A)
    [again] = await survivor.take(count=5)
    assert again.job_id == dead.job_id


async def test_finished_entries_are_cleared_not_taken_over(queue):
    delivery = await taken(queue)
    await queue.producer.cancel(delivery.job_id)  # running: asks the worker to stop
    await delivery.cancelled()
    await asyncio.sleep(0.15)
    assert await queue.consumer("other", lease_s=0.1).reclaim(count=5) == []
    assert await queue.redis.xlen(queue.keys.stream) == 0


async def test_departed_consumers_are_forgotten(queue):
    delivery = await taken(queue, "departed")
    await delivery.posting()
    await delivery.posted(1)
    await asyncio.sleep(0.1)
    live = await taken(queue, "live")  # holds a job: never forgotten, nor is a live worker
    assert await queue.consumer("tidy").forget_departed(live={"tidy"}, idle_s=0.05) == [
        "departed"]
    names = [c["name"] for c in await queue.redis.xinfo_consumers(queue.keys.stream, "workers")]
    assert names == [b"live"]
    assert live.status is JobStatus.RUNNING


# --- Redis coming back empty --------------------------------------------------------------------


async def test_workers_recover_by_themselves_when_redis_comes_back_empty(queue):
    """Break 4: the consumer group was created only at start; after a FLUSHALL every takeover
    raised NOGROUP for ever, and a take had already popped the job when XREADGROUP failed."""
    consumer = queue.consumer("w", lease_s=0.1)
    await taken(queue)
    await queue.redis.flushall()
    assert await consumer.reclaim(count=5) == []
    job = a_job()
    await queue.producer.enqueue(job)
    [delivery] = await consumer.take(count=1)
    assert delivery.job_id == job.id


async def test_a_job_whose_state_vanished_never_breaks_a_script(queue):
    delivery = await taken(queue)
    behind = a_job()
    await queue.producer.enqueue(behind)
    await queue.redis.delete(queue.keys.job(delivery.job_id), queue.keys.job(behind.id))
    assert await delivery.posting() is Outcome.GONE
    assert await queue.consumer().renew([delivery]) == []  # still its worker's to finish
    assert await queue.consumer().take(count=5) == []  # the dangling key is dropped
    await asyncio.sleep(0.1)
    assert await queue.consumer("other", lease_s=0.05).reclaim(count=5) == []
    assert await queue.redis.xlen(queue.keys.stream) == 0
