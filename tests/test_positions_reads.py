"""The positions loop reads little of a long queue: every few seconds it looks at every queued
job, so it reads only the fields that decide whether a message needs an edit, a few jobs per
round trip, and a whole job only for a message it edits. Reading and parsing every job whole
held up the bot's event loop (and every /pony behind it) in proportion to the queue's length
(bench/positions.py). Counted where redis-py writes to its socket (ponybot_testkit.round_trips),
against a real Redis, real discord.py and the fake Discord."""

from __future__ import annotations

import asyncio
import datetime

import discord
import pytest

from cogs.positions import Watched
from ponybot_core.queue import JobStatus
from ponybot_core.queue.reads import SHOWN_CHUNK
from ponybot_testkit.round_trips import TaskTrips, recording
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, USER_ID, make_job

pytestmark = pytest.mark.usefixtures("bot")

QUEUED_BEHIND = 300


async def pony(fake):
    itx = await fake.invoke("pony", {"tags": "pinkie pie, party"}, channel_id=CHANNEL_ID,
                            user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def cancel(fake, itx):
    [button] = [c for row in itx.original.components for c in row["components"]
                if "cancel" in c["custom_id"]]
    await (await fake.click(itx.original.id, button["custom_id"], user_id=USER_ID)) \
        .wait_response()


def this_task(rec) -> TaskTrips:
    [mine] = [t for t in rec.tasks.values() if t.task is asyncio.current_task()]
    return mine


def commands(trips: TaskTrips, name: str) -> int:
    return sum(trip.count(name) for trip in trips.redis())


async def test_a_positions_cycle_reads_whole_jobs_only_for_the_messages_it_edits(fake, bot):
    first, second, third, last = [await pony(fake) for _ in range(4)]
    # A long queue behind them, every message already showing where its job stands once the
    # three ahead are cancelled: nothing there is worth an edit.
    now = discord.utils.time_snowflake(datetime.datetime.now(datetime.UTC))
    behind = [make_job(interaction_id=now + i, guild_id=GUILD_ID, channel_id=CHANNEL_ID,
                       user_id=7_000_000 + i) for i in range(QUEUED_BEHIND)]
    for job in behind:
        await bot.queue.enqueue(job)
    for itx in (first, second, third):
        await cancel(fake, itx)
    positions = bot.get_cog("PositionsCog")
    for n, job in enumerate(behind, 2):
        await bot.queue.record_message(job.id, 8_000_000 + n, position=n)
        positions.watched[job.id] = Watched(job, 8_000_000 + n)
    positions.min_gap_s = 0

    with recording() as rec:
        assert await positions.update_positions() == 1
        assert await positions.tell_lost() == 0
    trips = this_task(rec)

    assert "next up" in last.original.content
    assert commands(trips, "HGETALL") == 1  # the one message edited
    # A few fields of each job: every queued one for positions, every watched one (the three
    # cancelled too, not yet forgotten) for lost jobs.
    assert commands(trips, "HMGET") == (QUEUED_BEHIND + 1) + (QUEUED_BEHIND + 4)
    biggest = max(len(trip) for trip in trips.redis())
    assert biggest <= 3 * SHOWN_CHUNK  # three small commands per job, a chunk per round trip


async def test_the_few_fields_read_tell_a_gone_or_broken_job_as_the_whole_read_does(bot, redis):
    keys, reads = bot.keys, bot.queue_reads
    whole = make_job(interaction_id=11, guild_id=GUILD_ID)
    await bot.queue.enqueue(whole)
    await bot.queue.record_message(whole.id, 99, position=1)
    await redis.hset(keys.job("no-job"), mapping={"id": "no-job", "status": "queued"})
    await redis.hset(keys.job("no-status"), mapping={"id": "no-status", "job": whole.to_json()})
    await redis.hset(keys.job("bad-status"), mapping={"id": "bad-status", "status": "lost",
                                                      "job": whole.to_json()})
    ids = [whole.id, "no-job", "no-status", "bad-status", "never-was"]

    few, full = await reads.shown(ids, chunk=2), await reads.states(ids)

    assert {i for i in ids if few[i] is None} == {i for i in ids if full[i] is None} \
        == set(ids[1:])
    seen, state = few[whole.id], full[whole.id]
    assert seen is not None and state is not None
    assert seen.token_kept and state.token
    assert (seen.status, seen.message_id, seen.shown_position, seen.shown_at) == \
        (JobStatus.QUEUED, state.message_id, state.shown_position, state.shown_at) == \
        (JobStatus.QUEUED, 99, 1, state.shown_at)


async def test_messages_whose_token_is_gone_are_not_read_whole_cycle_after_cycle(bot, redis):
    # Jobs that waited past their interaction token: their messages can no longer be edited,
    # so however far they move, the loop never reads them whole (nor tries).
    now = discord.utils.time_snowflake(datetime.datetime.now(datetime.UTC))
    jobs = [make_job(interaction_id=now + i, guild_id=GUILD_ID, user_id=7_000_000 + i)
            for i in range(QUEUED_BEHIND)]
    for n, job in enumerate(jobs, 1):
        await bot.queue.enqueue(job)
        await bot.queue.record_message(job.id, 8_000_000 + n, position=n + 1_000)
        await redis.delete(bot.keys.token(job.id))
    positions = bot.get_cog("PositionsCog")
    positions.min_gap_s = 0

    with recording() as rec:
        assert await positions.update_positions() == 0
        assert await positions.update_positions() == 0
    trips = this_task(rec)

    assert commands(trips, "HGETALL") == 0
    assert commands(trips, "HMGET") == 2 * QUEUED_BEHIND
