"""Exactly once, as users see it: a worker dies or fails at each step of a job's life, another
recovers the job, and the result is shown once — never lost, never twice, whether it went into
the queued message (interaction token alive) or into the channel (token expired).

The faults are injected by the worker's own hook (inference/loop/faults.py, PONYBOT_FAULTS); a real
worker process exits with 137 where the test says, as a SIGKILL'd one would.
"""

from __future__ import annotations

import asyncio

import pytest

from inference.loop import faults
from ponybot_core.keys import Keys
from ponybot_core.queue import JobStatus, QueueReads
from ponybot_testkit.world import CHANNEL_ID
from tests.conftest import (
    pony,
    queued_job_id,
    results_shown,
    spawn_worker,
    until_finished,
    write_config_toml,
)

pytestmark = pytest.mark.usefixtures("bot")


@pytest.mark.parametrize(("point", "path"), [
    ("after_take", "edit"),
    ("sampling", "edit"),
    ("after_sample", "edit"),
    ("before_post", "edit"),
    ("after_post", "edit"),
    ("after_finish", "edit"),
    ("before_post", "channel"),
    ("after_post", "channel"),
])
async def test_a_worker_killed_at_any_step_leaves_exactly_one_result(
        point, path, fake, redis, redis_server, tiny_pipeline_dir, tmp_path):
    config = write_config_toml(tmp_path / "config.toml", tiny_pipeline_dir, fake, lease_s=1.0)
    itx = await pony(fake)
    job_id = queued_job_id(itx)
    if path == "channel":
        fake.clock.advance(16 * 60)  # the interaction token has expired: channel posts
    doomed = spawn_worker(config, redis_server.url, "doomed", faults=f"{point}=exit")
    assert await asyncio.to_thread(doomed.wait, 120) == faults.EXIT_STATUS
    rescuer = spawn_worker(config, redis_server.url, "rescuer")
    try:
        assert await until_finished(redis, [job_id]) == [JobStatus.POSTED]
    finally:
        rescuer.kill()
        await asyncio.to_thread(rescuer.wait)
    assert results_shown(fake, job_id) == 1
    # One post was sent, whoever sent it: a rescuer that finds the result on Discord records
    # it, and only a job that never reached Discord is posted by the rescuer.
    edits = [r for r in fake.requests
             if r[0] == "PATCH" and r[1].startswith("/webhooks/") and r[2] == 200]
    posts = [r for r in fake.requests
             if r[0] == "POST" and r[1] == f"/channels/{CHANNEL_ID}/messages" and r[2] == 200]
    assert (len(edits), len(posts)) == ((0, 1) if path == "channel" else (1, 0))


@pytest.mark.parametrize("point", ["sampling", "after_sample", "before_post", "after_post"])
async def test_an_error_at_any_step_is_retried_without_a_second_result(
        point, fake, redis, start_worker):
    itx = await pony(fake)
    job_id = queued_job_id(itx)
    faults.arm(f"{point}=raise")
    try:
        await start_worker()
        assert await until_finished(redis, [job_id]) == [JobStatus.POSTED]
    finally:
        faults.arm("")
    assert results_shown(fake, job_id) == 1
    state = await QueueReads(redis, Keys()).state(job_id)
    # Before the post the job went back to the queue (a second attempt); after it, the post
    # was found on Discord and recorded, never drawn again.
    assert state.attempts == 2
