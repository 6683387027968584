"""What Redis keeps, and for how long: a job that ends without a result is forgotten soon (its
hash and its token key alike), a posted one is kept for its result buttons, and a server's or
a channel's saved settings go when the server removes the bot or the channel is deleted.

Every test reads TTLs, never the clock: a short lifetime is checked as the TTL Redis holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from bot import saved_settings
from bot.saved_settings import SavedSettings
from ponybot_core.keys import Keys
from ponybot_core.queue import Consumer, JobStatus, Outcome, Producer, QueueReads, UserLimitReached
from ponybot_testkit.world import (
    CHANNEL_ID,
    GUILD_ID,
    NSFW_CHANNEL_ID,
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    OTHER_USER_ID,
    USER_ID,
    make_job,
    running_bot,
    tiny_config,
)

KEYS = Keys("fp")
BOT_KEYS = Keys()
GUILD = 100
# Distinct lifetimes, so a key that got another ending's TTL shows.
LIFETIME = {JobStatus.POSTED: 600, JobStatus.CANCELLED: 60, JobStatus.DEAD: 300}
MANAGE_GUILD = 1 << 5
THREAD_ID = 4_000_000_000_000_099


# --- the queue's side: each ending's lifetime ----------------------------------------------------


@dataclass
class Queue:
    redis: Redis
    producer: Producer
    reads: QueueReads

    def consumer(self, name: str = "w", *, lease_s: float = 60.0) -> Consumer:
        return Consumer(self.redis, KEYS, name, lease_s=lease_s,
                        result_ttl_s=LIFETIME[JobStatus.POSTED],
                        cancelled_ttl_s=LIFETIME[JobStatus.CANCELLED],
                        dead_ttl_s=LIFETIME[JobStatus.DEAD])


@pytest.fixture
def q(redis: Redis) -> Queue:
    return Queue(redis, Producer(redis, KEYS, result_ttl_s=LIFETIME[JobStatus.POSTED],
                                 cancelled_ttl_s=LIFETIME[JobStatus.CANCELLED],
                                 dead_ttl_s=LIFETIME[JobStatus.DEAD]),
                 QueueReads(redis, KEYS))


async def ttls(redis: Redis, job_id: str) -> tuple[int, int]:
    return await redis.ttl(KEYS.job(job_id)), await redis.ttl(KEYS.token(job_id))


async def test_a_job_cancelled_while_queued_keeps_its_hash_and_token_only_the_cancelled_lifetime(
        q):
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    assert (await q.producer.cancel(job.id)).was == JobStatus.QUEUED
    job_ttl, token_ttl = await ttls(q.redis, job.id)
    assert 0 < job_ttl <= LIFETIME[JobStatus.CANCELLED]
    assert 0 < token_ttl <= LIFETIME[JobStatus.CANCELLED]


async def test_a_job_cancelled_while_running_keeps_its_keys_only_the_cancelled_lifetime(q):
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    [delivery] = await q.consumer().take(count=1)
    assert (await q.producer.cancel(job.id)).was == JobStatus.RUNNING
    assert await q.redis.ttl(KEYS.job(job.id)) == -1  # still running: kept while it runs
    assert await delivery.cancelled() is Outcome.OK
    job_ttl, token_ttl = await ttls(q.redis, job.id)
    assert 0 < job_ttl <= LIFETIME[JobStatus.CANCELLED]
    assert 0 < token_ttl <= LIFETIME[JobStatus.CANCELLED]


async def test_a_dead_lettered_job_is_kept_for_the_admin_its_own_lifetime(q):
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    [delivery] = await q.consumer().take(count=1)
    assert await delivery.give_up("it broke") is Outcome.OK
    job_ttl, token_ttl = await ttls(q.redis, job.id)
    assert LIFETIME[JobStatus.CANCELLED] < job_ttl <= LIFETIME[JobStatus.DEAD]
    assert 0 < token_ttl <= LIFETIME[JobStatus.DEAD]


async def test_a_posted_job_keeps_the_results_lifetime_for_its_buttons(q):
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    [delivery] = await q.consumer().take(count=1)
    await delivery.posting()
    assert await delivery.posted(7) is Outcome.OK
    job_ttl, token_ttl = await ttls(q.redis, job.id)
    assert LIFETIME[JobStatus.DEAD] < job_ttl <= LIFETIME[JobStatus.POSTED]
    assert 0 < token_ttl <= LIFETIME[JobStatus.POSTED]


async def test_a_job_taken_back_after_its_answer_failed_keeps_only_the_cancelled_lifetime(
        fake, redis, settings, tiny_pipeline_dir):
    queue = {**settings.config.queue.model_dump(), "cancelled_ttl_s": 60}
    short = settings.model_copy(update={"config": tiny_config(tiny_pipeline_dir, fake,
                                                              queue=queue)})
    fake.inject("POST", r"^/interactions/\d+/[^/]+/callback$", 404)
    async with running_bot(short, fake) as bot:
        await fake.invoke("pony", {"tags": "pony"}, channel_id=CHANNEL_ID, user_id=USER_ID)
        reads = bot.queue_reads
        for _ in range(500):  # until the bot has taken it back (bounded by tries, not time)
            ids = [BOT_KEYS.job_id(k) async for k in redis.scan_iter(match=BOT_KEYS.job("*"))]
            states = [s for s in (await reads.states(ids)).values() if s]
            if states and states[0].status is JobStatus.CANCELLED:
                break
            await asyncio.sleep(0.02)
        [state] = states
        assert state.status is JobStatus.CANCELLED
        assert 0 < await redis.ttl(BOT_KEYS.job(state.id)) <= 60
        assert 0 < await redis.ttl(BOT_KEYS.token(state.id)) <= 60


# --- every way a job can end leaves nothing without a lifetime ---------------------------------

# Each ending plays one job (or two) to its end and says how each ended; None = never stored.
Ending = Callable[[Queue], Awaitable[dict[str, JobStatus | None]]]


async def _taken(q: Queue, consumer: Consumer | None = None):
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    [delivery] = await (consumer or q.consumer()).take(count=1)
    return job, delivery


async def posted(q: Queue) -> dict[str, JobStatus | None]:
    job, delivery = await _taken(q)
    await delivery.posting()
    await delivery.posted(1, worker_seconds=1.0)
    return {job.id: JobStatus.POSTED}


async def cancelled_while_queued(q: Queue) -> dict[str, JobStatus | None]:
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    await q.producer.cancel(job.id)
    return {job.id: JobStatus.CANCELLED}


async def taken_back_after_a_failed_answer(q: Queue) -> dict[str, JobStatus | None]:
    # bot/submit.py's take-back: the answer failed, the job is cancelled while it waits.
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job, user_limit=3)
    await q.producer.cancel(job.id)
    return {job.id: JobStatus.CANCELLED}


async def refused_over_the_cap(q: Queue) -> dict[str, JobStatus | None]:
    first, second = make_job(guild_id=GUILD), make_job(guild_id=GUILD)
    await q.producer.enqueue(first, user_limit=1)
    with pytest.raises(UserLimitReached):
        await q.producer.enqueue(second, user_limit=1)
    await q.producer.cancel(first.id)
    return {first.id: JobStatus.CANCELLED, second.id: None}


async def edited_then_cancelled(q: Queue) -> dict[str, JobStatus | None]:
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    await q.producer.edit_queued(job.model_copy(update={"steps": 3}))
    await q.producer.cancel(job.id)
    return {job.id: JobStatus.CANCELLED}


async def cancelled_while_running(q: Queue) -> dict[str, JobStatus | None]:
    job, delivery = await _taken(q)
    await q.producer.cancel(job.id)
    await delivery.cancelled()
    return {job.id: JobStatus.CANCELLED}


async def cancel_asked_too_late(q: Queue) -> dict[str, JobStatus | None]:
    job, delivery = await _taken(q)
    await q.producer.cancel(job.id)  # the worker posts before it sees the flag
    await delivery.posting()
    await delivery.posted(1)
    return {job.id: JobStatus.POSTED}


async def given_back_then_posted(q: Queue) -> dict[str, JobStatus | None]:
    job, delivery = await _taken(q)
    await delivery.retry()
    [again] = await q.consumer("w2").take(count=1)
    await again.posting()
    await again.posted(1)
    return {job.id: JobStatus.POSTED}


async def dead_while_running(q: Queue) -> dict[str, JobStatus | None]:
    job, delivery = await _taken(q)
    await delivery.give_up("failed 3 times")
    return {job.id: JobStatus.DEAD}


async def dead_while_posting(q: Queue) -> dict[str, JobStatus | None]:
    job, delivery = await _taken(q)
    await delivery.posting()
    await delivery.give_up("Discord refused the result")
    return {job.id: JobStatus.DEAD}


async def unreadable_and_dead_lettered(q: Queue) -> dict[str, JobStatus | None]:
    job = make_job(guild_id=GUILD)
    await q.producer.enqueue(job)
    await q.redis.hset(KEYS.job(job.id), "job", '{"from": "a newer bot"}')
    assert await q.consumer().take(count=1) == []
    return {job.id: JobStatus.DEAD}


async def taken_over_then_dead(q: Queue) -> dict[str, JobStatus | None]:
    job, delivery = await _taken(q)
    [over] = await q.consumer("heir", lease_s=0).reclaim(count=1)
    assert await delivery.posting() is Outcome.LOST
    await over.give_up("failed 3 times")
    return {job.id: JobStatus.DEAD}


async def reclaimed_while_paused_then_cancelled(q: Queue) -> dict[str, JobStatus | None]:
    job, _ = await _taken(q)
    await q.producer.pause(GUILD)
    assert await q.consumer("heir", lease_s=0).reclaim(count=1) == []  # back in its list
    await q.producer.cancel(job.id)
    await q.producer.resume(GUILD)
    return {job.id: JobStatus.CANCELLED}


ENDINGS: list[Ending] = [
    posted, cancelled_while_queued, taken_back_after_a_failed_answer, refused_over_the_cap,
    edited_then_cancelled, cancelled_while_running, cancel_asked_too_late,
    given_back_then_posted, dead_while_running, dead_while_posting,
    unreadable_and_dead_lettered, taken_over_then_dead, reclaimed_while_paused_then_cancelled,
]
# The queue's own keys, bounded by design (trimmed, or emptied as jobs end): no TTL.
PERMANENT = {KEYS.stream, KEYS.dead, KEYS.durations, KEYS.wake}


async def keys_outliving_their_job(redis: Redis, ended: dict[str, JobStatus | None]) -> list[str]:
    """Every key under the prefix that is neither one of the queue's permanent keys nor a key
    of an ended job with a TTL within that ending's lifetime."""
    wrong = []
    async for raw in redis.scan_iter(match=f"{KEYS.prefix}:*", count=1000):
        key = raw.decode()
        if key in PERMANENT:
            continue
        ttl = await redis.ttl(key)
        owner = key.removeprefix(f"{KEYS.prefix}:job:").removeprefix(f"{KEYS.prefix}:token:")
        status = ended.get(owner)
        if status is None:
            wrong.append(f"{key} (TTL {ttl}) belongs to no ended job")
        elif not 0 < ttl <= LIFETIME[status]:
            wrong.append(f"{key} (TTL {ttl}) outlives a {status.value} job ({LIFETIME[status]} s)")
    return wrong


@pytest.mark.parametrize("ending", ENDINGS, ids=[e.__name__ for e in ENDINGS])
async def test_each_way_a_job_ends_leaves_no_key_beyond_that_endings_lifetime(q, ending):
    ended = await ending(q)
    assert await keys_outliving_their_job(q.redis, ended) == []


@hypothesis_settings(max_examples=15, deadline=None, database=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=st.lists(st.sampled_from(ENDINGS), min_size=2, max_size=8))
async def test_a_mixed_run_of_endings_leaves_no_key_without_a_ttl_but_the_permanent_ones(q, run):
    await q.redis.flushall()  # one Redis for every example
    ended: dict[str, JobStatus | None] = {}
    for ending in run:
        ended.update(await ending(q))
    assert await keys_outliving_their_job(q.redis, ended) == []


# --- the bot's side: settings go with their server or channel ----------------------------------


async def command(fake, name: str, options: dict | None = None, *, user_id: int = USER_ID,
                  channel_id: int | None = CHANNEL_ID, guild_id: object = ...,
                  permissions: int = 0):
    itx = await fake.invoke(name, options or {}, channel_id=channel_id, user_id=user_id,
                            guild_id=guild_id, permissions=permissions)
    await itx.wait_response(timeout=5)
    assert itx.ephemeral and itx.original.content.startswith(("✅", "Each user")), \
        itx.original.content
    return itx


async def everything(redis: Redis) -> dict[str, object]:
    """Every key and its contents (hashes and sets; that is all settings are)."""
    out: dict[str, object] = {}
    async for raw in redis.scan_iter(match=f"{BOT_KEYS.prefix}:*", count=1000):
        kind = (await redis.type(raw)).decode()
        if kind == "hash":
            out[raw.decode()] = await redis.hgetall(raw)
        elif kind == "set":
            out[raw.decode()] = await redis.smembers(raw)
        elif kind == "string":
            out[raw.decode()] = await redis.get(raw)
        else:
            out[raw.decode()] = kind
    return out


async def settle(bot, event: str, act: Callable[[], None]) -> None:
    """Do `act` (a gateway event from the fake) and wait for the bot to say it handled it."""
    handled = bot.wait_for(event, timeout=10)  # listening from here, before the event
    act()
    await handled


async def save_everywhere(fake) -> None:
    """Saved settings in both servers and in a DM: users', channels' and servers' own."""
    for user in (USER_ID, OTHER_USER_ID):
        await command(fake, "settings set", {"steps": 3}, user_id=user)
    await command(fake, "settings channel set", {"cfg": 6.0}, permissions=MANAGE_GUILD)
    await command(fake, "settings channel set", {"count": 2}, channel_id=NSFW_CHANNEL_ID,
                  permissions=MANAGE_GUILD)
    await command(fake, "queue limit", {"jobs": 5}, permissions=MANAGE_GUILD)
    await command(fake, "settings set", {"steps": 4}, channel_id=OTHER_CHANNEL_ID)
    await command(fake, "settings channel set", {"cfg": 5.0}, channel_id=OTHER_CHANNEL_ID,
                  user_id=OTHER_USER_ID, permissions=MANAGE_GUILD)
    await command(fake, "queue limit", {"jobs": 2}, channel_id=OTHER_CHANNEL_ID,
                  user_id=OTHER_USER_ID, permissions=MANAGE_GUILD)
    await command(fake, "settings set", {"steps": 5}, channel_id=None, guild_id=None)


def of_guild(key: str, guild_id: int) -> bool:
    return f":{guild_id}:" in key or key.endswith(f":{guild_id}")


async def test_a_servers_departure_deletes_its_settings_and_saved_defaults_and_nothing_else(
        bot, fake, redis):
    await save_everywhere(fake)
    before = await everything(redis)
    assert {BOT_KEYS.guild(GUILD_ID), BOT_KEYS.user_settings(GUILD_ID, USER_ID),
            BOT_KEYS.user_settings(GUILD_ID, OTHER_USER_ID),
            BOT_KEYS.channel_settings(GUILD_ID, CHANNEL_ID),
            BOT_KEYS.channel_settings(GUILD_ID, NSFW_CHANNEL_ID)} <= before.keys()

    await settle(bot, "server_forgotten", lambda: fake.remove_guild(GUILD_ID))

    after = await everything(redis)
    assert [k for k in after if of_guild(k, GUILD_ID)] == []
    others = {k: v for k, v in before.items() if not of_guild(k, GUILD_ID)}
    assert after == others
    assert BOT_KEYS.guild(OTHER_GUILD_ID) in after
    assert BOT_KEYS.user_settings(None, USER_ID) in after  # a DM's defaults are no server's


async def test_a_deleted_channels_defaults_go_and_nothing_else(bot, fake, redis):
    await save_everywhere(fake)
    before = await everything(redis)
    gone = BOT_KEYS.channel_settings(GUILD_ID, CHANNEL_ID)

    await settle(bot, "channel_forgotten", lambda: fake.remove_channel(CHANNEL_ID))

    after = await everything(redis)
    assert gone not in after
    index = BOT_KEYS.saved_settings_index(GUILD_ID)
    assert gone.encode() not in after[index]
    assert {k: v for k, v in after.items() if k != index} == \
        {k: v for k, v in before.items() if k not in (gone, index)}


async def test_a_deleted_threads_defaults_go_and_nothing_else(bot, fake, redis):
    await save_everywhere(fake)
    # `/settings channel set` in a thread saves under the thread's id (the fake has no
    # threads to invoke in, so it is saved the way the command saves it).
    thread_key = BOT_KEYS.channel_settings(GUILD_ID, THREAD_ID)
    await saved_settings.save(redis, thread_key, SavedSettings(steps=7),
                        index=BOT_KEYS.saved_settings_index(GUILD_ID))
    before = await everything(redis)

    await settle(bot, "channel_forgotten",
                 lambda: fake.remove_thread(GUILD_ID, THREAD_ID, parent_id=CHANNEL_ID))

    after = await everything(redis)
    index = BOT_KEYS.saved_settings_index(GUILD_ID)
    assert thread_key not in after and thread_key.encode() not in after[index]
    assert {k: v for k, v in after.items() if k != index} == \
        {k: v for k, v in before.items() if k not in (thread_key, index)}


async def test_a_departed_paused_server_leaves_no_pause_no_ring_entry_and_no_waiting_jobs(
        bot, fake, redis):
    # Nobody there can resume it any more: its waiting jobs could never run.
    stuck = make_job(guild_id=GUILD_ID, channel_id=CHANNEL_ID)
    await bot.queue.enqueue(stuck)
    await bot.queue.pause(GUILD_ID)
    # The other server is not paused: its job runs as usual, the bot's departure or not.
    runs = make_job(guild_id=OTHER_GUILD_ID, channel_id=OTHER_CHANNEL_ID)
    await bot.queue.enqueue(runs)

    await settle(bot, "server_forgotten", lambda: fake.remove_guild(GUILD_ID))
    await settle(bot, "server_forgotten", lambda: fake.remove_guild(OTHER_GUILD_ID))

    assert not await redis.sismember(BOT_KEYS.paused, str(GUILD_ID))
    assert not await redis.exists(BOT_KEYS.waiting(GUILD_ID))
    assert BOT_KEYS.waiting(GUILD_ID).encode() not in await redis.lrange(BOT_KEYS.ring, 0, -1)
    state = await bot.queue_reads.state(stuck.id)
    assert state is not None and state.status is JobStatus.CANCELLED
    assert 0 < await redis.ttl(BOT_KEYS.job(stuck.id)) <= bot.config.queue.cancelled_ttl_s
    state = await bot.queue_reads.state(runs.id)
    assert state is not None and state.status is JobStatus.QUEUED
    assert await redis.lrange(BOT_KEYS.ring, 0, -1) == [
        BOT_KEYS.waiting(OTHER_GUILD_ID).encode()]


async def test_defaults_saved_before_the_index_existed_are_still_read_and_go_with_their_server(
        fake, redis, settings):
    # Written the way an older version wrote them: plain hashes, no index.
    old = {BOT_KEYS.user_settings(GUILD_ID, USER_ID): {"steps": "3"},
           BOT_KEYS.channel_settings(GUILD_ID, CHANNEL_ID): {"cfg": "6.0"},
           BOT_KEYS.user_settings(OTHER_GUILD_ID, USER_ID): {"steps": "4"}}
    for key, mapping in old.items():
        await redis.hset(key, mapping=mapping)
    async with running_bot(settings, fake) as bot:
        await bot.get_cog("SettingsCog").indexing  # once, at the first start
        layers = await saved_settings.load_layers(redis, BOT_KEYS, bot.config, guild_id=GUILD_ID,
                                            channel_id=CHANNEL_ID, user_id=USER_ID)
        assert layers.user.steps == 3 and layers.channel.cfg == 6.0

        await settle(bot, "server_forgotten", lambda: fake.remove_guild(GUILD_ID))

        assert not await redis.exists(*list(old)[:2])
        assert await redis.hgetall(BOT_KEYS.user_settings(OTHER_GUILD_ID, USER_ID)) == \
            {b"steps": b"4"}


async def test_the_index_of_old_defaults_is_built_once(redis):
    await redis.hset(BOT_KEYS.user_settings(GUILD_ID, USER_ID), "steps", "3")
    assert await saved_settings.index_saved(redis, BOT_KEYS) == 1
    assert await redis.smembers(BOT_KEYS.saved_settings_index(GUILD_ID)) == {
        BOT_KEYS.user_settings(GUILD_ID, USER_ID).encode()}
    # Done once: later starts do not scan again.
    await redis.hset(BOT_KEYS.user_settings(GUILD_ID, OTHER_USER_ID), "steps", "3")
    assert await saved_settings.index_saved(redis, BOT_KEYS) == 0
