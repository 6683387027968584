"""The queue's promises while the ground moves: Redis restarted mid-run (with its AOF, and empty),
Redis failing calls at random, a poison job in a batch, a model that does not fit for a moment,
a message too large for one Discord request. Real redis-server, real worker, fake Discord."""

from __future__ import annotations

import asyncio

import pytest

from inference.loop import faults
from inference.models.cache import DeviceFull
from ponybot_core.config import LoadedConfig
from ponybot_core.keys import Keys
from ponybot_core.queue import JobStatus, QueueReads
from ponybot_testkit.redis_faults import Faults, restart
from tests.conftest import pony, queued_job_id, results_shown, until_finished

pytestmark = pytest.mark.usefixtures("bot")


async def until_running(redis, job_id: str) -> None:
    reads = QueueReads(redis, Keys())
    for _ in range(400):
        state = await reads.state(job_id)
        if state and state.status is JobStatus.RUNNING:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never started")


def with_worker(settings: LoadedConfig, **worker: object) -> LoadedConfig:
    config = settings.config
    return settings.model_copy(update={"config": config.model_copy(
        update={"worker": config.worker.model_copy(update=worker)})})


async def test_a_redis_restart_mid_run_loses_and_doubles_nothing(fake, redis, redis_server,
                                                                 start_worker):
    itxs = [await pony(fake, seed=i, steps=20) for i in range(4)]
    ids = [queued_job_id(i) for i in itxs]
    await start_worker()
    await until_running(redis, ids[0])
    await asyncio.to_thread(restart, redis_server)  # SIGTERM: the AOF is complete
    assert await until_finished(redis, ids) == [JobStatus.POSTED] * 4
    assert [results_shown(fake, i) for i in ids] == [1] * 4


async def test_redis_coming_back_empty_is_survived_and_waiting_users_are_told(
        fake, bot, redis, redis_server, start_worker):
    """Break 4, from the users' side: no persistence, a failover to an empty replica."""
    running = await pony(fake, steps=60)
    waiting = [await pony(fake, seed=i) for i in range(2)]
    positions = bot.get_cog("PositionsCog")
    running_id = queued_job_id(running)
    worker = await start_worker()
    await until_running(redis, running_id)
    assert await positions.tell_lost() == 0  # its loop's pass: sees one running, two waiting
    # Redis restarts with nothing: its data files are gone.
    await asyncio.to_thread(redis_server.stop)
    for path in redis_server.data_dir.glob("appendonly*"):
        path.unlink()
    await asyncio.to_thread(redis_server.start)

    # The bot keeps answering within Discord's 3 seconds (the fake enforces them).
    after = await pony(fake, seed=99)
    assert "Queued" in after.original.content
    after_id = queued_job_id(after)
    # The users of the jobs that waited are told; the running one is still drawn and posted
    # by the worker that holds it; the worker takes new jobs by itself.
    assert await positions.tell_lost() == 2
    for itx in waiting:
        [notice] = itx.followups
        assert notice.ephemeral and "lost track of your job" in notice.content
    await fake.wait_for(lambda: results_shown(fake, running_id) == 1, timeout=90)
    await fake.wait_for(lambda: results_shown(fake, after_id) == 1, timeout=90)
    assert not worker.task.done()


async def test_redis_failing_calls_at_random_never_kills_the_worker_nor_doubles_a_result(
        fake, redis, start_worker):
    """Break 5: an error in ack, give-back, the cancel check or finishing ended the worker."""
    itxs = [await pony(fake, seed=i) for i in range(4)]
    ids = [queued_job_id(i) for i in itxs]
    worker = await start_worker()
    blips = Faults(rate=0.3)
    blips.wrap(worker.worker.redis)
    await asyncio.sleep(3)
    blips.rate = 0.0
    assert await until_finished(redis, ids) == [JobStatus.POSTED] * 4
    assert [results_shown(fake, i) for i in ids] == [1] * 4
    assert blips.injected >= 3
    assert not worker.task.done()


async def test_a_poison_job_in_a_batch_is_the_only_one_dead_lettered(fake, redis, settings,
                                                                     start_worker):
    """Break 6: a failed batch was given back and retaken whole, so one poison job
    dead-lettered every job drawn with it."""
    itxs = [await pony(fake, tags="pony, solo"), await pony(fake, tags="pony, poison"),
            await pony(fake, tags="pony, muffin")]
    ids = [queued_job_id(i) for i in itxs]
    faults.arm("sampling=raise*-1@poison")
    try:
        await start_worker(settings_=with_worker(settings, max_batch=4))
        done = await until_finished(redis, ids)
    finally:
        faults.arm("")
    assert done == [JobStatus.POSTED, JobStatus.DEAD, JobStatus.POSTED]
    assert "failed 3 times" in itxs[1].original.content
    [(_, fields)] = await redis.xrange(Keys().dead)
    assert fields[b"job_id"].decode() == ids[1]


async def test_a_model_that_does_not_fit_for_a_moment_is_retried_not_given_up(
        fake, redis, start_worker, monkeypatch):
    """Break 6: a transient out-of-memory while moving a model to the GPU gave the job up."""
    itx = await pony(fake)
    worker = await start_worker()
    real_get = worker.worker.models.get
    calls = []

    async def full_once(model_id: str):
        calls.append(model_id)
        if len(calls) == 1:
            raise DeviceFull("model 'tiny' does not fit on the device just now")
        return await real_get(model_id)

    monkeypatch.setattr(worker.worker.models, "get", full_once)
    assert await until_finished(redis, [queued_job_id(itx)]) == [JobStatus.POSTED]
    assert len(calls) == 2


async def test_a_message_too_large_for_one_request_is_refitted_not_dead_lettered(
        fake, redis, start_worker):
    """Break 7: four images each under the per-file limit can exceed what one request carries;
    Discord's 413 was taken as permanent and the job dead-lettered."""
    itx = await pony(fake, count=4)
    fake.max_request_bytes = 20_000
    await start_worker()
    assert await until_finished(redis, [queued_job_id(itx)]) == [JobStatus.POSTED]
    assert len(itx.original.attachments) == 4
    assert sum(a.size for a in itx.original.attachments) <= 20_000
    assert ("status", 413) in [("status", s) for _, _, s in fake.requests]
    assert "re-encoded" in itx.original.content or "downscaled" in itx.original.content


async def test_after_a_redis_restart_the_first_pony_is_queued_not_refused(fake, redis,
                                                                          redis_server):
    """Break 8: the bot's first commands after a restart hit a dead pooled connection and
    were refused as "queue unavailable"."""
    await pony(fake)  # the bot's pool now holds a connection to this server
    await asyncio.to_thread(restart, redis_server)
    itx = await pony(fake, seed=5)
    assert not itx.ephemeral and "Queued" in itx.original.content
