"""Several bot processes, each running its own range of Discord's gateway shards, on one Redis.

The fake Discord speaks the gateway's shard rules (ponybot_testkit.fake_discord.gateway): a
session that IDENTIFYs with `shard: [id, count]` gets a server's events only when
`(guild_id >> 22) % count == id`, and DMs only on shard 0. Each bot here is the real
`PonyBot` (discord.py's AutoShardedBot) with its own `shard_ids`; the promise is that every
command is answered exactly once, by the process that runs the server's shard, and every
accepted job is posted exactly once — whatever the other processes do with the same Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from bot.app import shard_of
from ponybot_core.config import (
    MAX_SHARDS,
    Config,
    ConfigError,
    DiscordConfig,
    LoadedConfig,
    ShardEnvironment,
    parse_shard_ids,
    with_shard_environment,
)
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.keys import Keys
from ponybot_core.queue import JobStatus, QueueReads
from ponybot_testkit.fake_discord import FakeDiscord, FakeInteraction, FakeMessage
from ponybot_testkit.fake_discord.gateway import shard_for
from ponybot_testkit.world import BOT_TOKEN, USER_ID, running_bot, tiny_config
from tests.conftest import (
    queued_job_id,
    results_shown,
    until_finished,
    write_config_toml,
)

if TYPE_CHECKING:
    from bot.app import PonyBot

SHARDS = 2
ADMINISTRATOR = 1 << 3
# Snowflakes whose shard (of two) is known: the shard is (id >> 22) % count.
SHARD_0_GUILD, SHARD_0_CHANNEL = 715_255_736 << 22, (715_255_736 << 22) + 11
SHARD_1_GUILD, SHARD_1_CHANNEL = 715_255_737 << 22, (715_255_737 << 22) + 11
CHANNELS = {0: SHARD_0_CHANNEL, 1: SHARD_1_CHANNEL}
GUILDS = {0: SHARD_0_GUILD, 1: SHARD_1_GUILD}


def shards_world(fake: FakeDiscord) -> None:
    """A server on each of two shards (the shared world's servers are on shard 1 too)."""
    fake.add_guild(SHARD_0_GUILD, name="Shard Zero")
    fake.add_channel(SHARD_0_GUILD, SHARD_0_CHANNEL, name="zero")
    fake.add_guild(SHARD_1_GUILD, name="Shard One")
    fake.add_channel(SHARD_1_GUILD, SHARD_1_CHANNEL, name="one")


def on_shard(settings: LoadedConfig, shard: int) -> LoadedConfig:
    """`settings` for the bot process that runs `shard` of SHARDS, as PONYBOT_SHARD_COUNT /
    PONYBOT_SHARD_IDS set it."""
    config = with_shard_environment(settings.config,
                                    ShardEnvironment(shard_count=SHARDS, shard_ids=str(shard)))
    return settings.model_copy(update={"config": config})


@contextlib.asynccontextmanager
async def two_bots(settings: LoadedConfig,
                   fake: FakeDiscord) -> AsyncIterator[tuple[PonyBot, PonyBot]]:
    """Two PonyBots in this event loop, one per shard, sharing the fake and the Redis."""
    shards_world(fake)
    async with running_bot(on_shard(settings, 0), fake) as zero, \
            running_bot(on_shard(settings, 1), fake) as one:
        await fake.wait_for_shards(SHARDS)
        yield zero, one


def answered_once_on(itx: FakeInteraction, shard: int) -> bool:
    """Sent to the session of `shard` alone, and answered by one callback, accepted."""
    return itx.delivered_to == [[shard, SHARDS]] and len(itx.callback_attempts) == 1 \
        and itx.callback_attempts[0][0] < 300


def edits_of(fake: FakeDiscord, itx: FakeInteraction, since: int) -> int:
    """PATCHes of the interaction's own message (by its id or as @original) since request
    number `since`."""
    assert itx.original is not None
    ends = (f"/{itx.token}/messages/@original", f"/{itx.token}/messages/{itx.original.id}")
    return sum(1 for method, path, _ in fake.requests[since:]
               if method == "PATCH" and path.endswith(ends))


# --- the fake speaks the gateway's shard rules ------------------------------------------------


def test_discords_shard_formula_is_the_bots():
    for guild_id in (SHARD_0_GUILD, SHARD_1_GUILD, 3_000_000_000_000_001, 81_384_788_765_712_384):
        for count in (1, 2, 3, 16):
            assert shard_of(guild_id, count) == shard_for(guild_id, count)
    assert shard_of(None, 4) == shard_for(None, 4) == 0  # DMs: shard 0
    # The worked example in serenity's docs (docs.rs/serenity, utils::shard_id): 17 shards.
    assert shard_of(81_384_788_765_712_384, 17) == 7
    assert (shard_for(SHARD_0_GUILD, 2), shard_for(SHARD_1_GUILD, 2)) == (0, 1)


async def test_each_shard_hears_only_its_servers_and_dms_reach_shard_zero(settings, fake, redis):
    async with two_bots(settings, fake) as (zero, one):
        by_shard = {s.shard[0]: s for s in fake.sessions if s.shard}
        ready = {k: next(d for e, d in s.delivered if e == "READY") for k, s in by_shard.items()}
        created = {k: {int(d["id"]) for e, d in s.delivered if e == "GUILD_CREATE"}
                   for k, s in by_shard.items()}
        dm = await fake.invoke("settings show", guild_id=None, user_id=USER_ID)
        await dm.wait_response(timeout=5)

        assert {k: {int(g["id"]) for g in r["guilds"]} for k, r in ready.items()} == created
        assert created[0] == {g for g in fake.guilds if shard_for(g, SHARDS) == 0}
        assert created[1] == {g for g in fake.guilds if shard_for(g, SHARDS) == 1}
        assert created[0] and created[1] and not created[0] & created[1]
        assert {g.id for g in zero.guilds} == created[0]
        assert {g.id for g in one.guilds} == created[1]
        assert ready[0]["shard"] == [0, SHARDS] and ready[1]["shard"] == [1, SHARDS]
        assert answered_once_on(dm, 0)
        assert (zero.shard_count, zero.shard_ids, one.shard_ids) == (SHARDS, [0], [1])

        # A server that adds the bot later, and one that removes it: only its shard hears.
        joined = SHARD_1_GUILD + (2 << 22)
        fake.add_guild(joined, name="Joined Later")
        await fake.wait_for(lambda: one.get_guild(joined) is not None)
        fake.remove_guild(SHARD_0_GUILD)
        await fake.wait_for(lambda: zero.get_guild(SHARD_0_GUILD) is None)
        assert zero.get_guild(joined) is None
        assert [e for e, d in by_shard[0].delivered if e.startswith("GUILD_")
                and int(d["id"]) in (joined, SHARD_0_GUILD)] == ["GUILD_CREATE", "GUILD_DELETE"]
        assert [e for e, d in by_shard[1].delivered if e.startswith("GUILD_")
                and int(d["id"]) in (joined, SHARD_0_GUILD)] == ["GUILD_CREATE"]


async def test_gateway_refuses_an_impossible_shard_and_an_unsharded_crowd(fake):
    import aiohttp

    fake.max_guilds_per_session = 1  # the world has 2 servers: one session may not hold both

    async def identify(shard: object) -> int | None:
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(fake.gateway_url + "?v=10&encoding=json") as ws:
            await ws.receive_json()  # HELLO
            await ws.send_json({"op": 2, "d": {"token": BOT_TOKEN, "intents": 1,
                                               "properties": {}, "shard": shard}})
            message = await ws.receive()
            return ws.close_code if message.type is aiohttp.WSMsgType.CLOSE else None

    assert await identify([2, 2]) == 4010
    assert await identify("0") == 4010
    assert await identify(None) == 4011
    assert await identify([0, 1]) == 4011
    fake.add_guild(SHARD_0_GUILD)  # shard 0 of 2 gets only this server: within the limit
    assert await identify([0, 2]) is None


# --- shard settings ---------------------------------------------------------------------------


def test_shard_ranges_are_read_from_the_environment_over_the_file(monkeypatch, settings):
    monkeypatch.setenv("PONYBOT_SHARD_COUNT", "8")
    monkeypatch.setenv("PONYBOT_SHARD_IDS", "0-2,6")
    assert with_shard_environment(settings.config).discord.shard_ids == [0, 1, 2, 6]
    monkeypatch.setenv("PONYBOT_SHARD_IDS", "[4, 5]")
    assert with_shard_environment(settings.config).discord.shard_ids == [4, 5]
    monkeypatch.delenv("PONYBOT_SHARD_IDS")
    monkeypatch.delenv("PONYBOT_SHARD_COUNT")
    assert with_shard_environment(settings.config) is settings.config


@pytest.mark.parametrize(("count", "ids", "says"), [
    ("2", "2", "outside 0..1"),
    (None, "0", "needs shard_count"),
    ("4", "0,0", "twice"),
    ("4", "1-0", "not a range"),
    ("4", "0-4000000000", "not a range"),
    ("4", "zero", "not a shard id"),
    ("0", None, "greater than or equal to 1"),
])
def test_an_impossible_shard_range_stops_the_bot_with_what_to_fix(monkeypatch, settings, count,
                                                                 ids, says):
    for name, value in (("PONYBOT_SHARD_COUNT", count), ("PONYBOT_SHARD_IDS", ids)):
        if value is not None:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=says):
        with_shard_environment(settings.config)
    with pytest.raises(ValueError, match=says):
        DiscordConfig(shard_count=count, shard_ids=ids)


def load() -> Config:
    """A config with no shard settings of its own (the parser tests need no Redis or model)."""
    return tiny_config(Path("unused"))


@pytest.mark.parametrize("spelling", ["\u0663", "\uff11", "1_0", "+1", "-1", "0x1", "1.0"])
def test_a_shard_id_is_ascii_digits_and_nothing_int_would_also_read(monkeypatch, spelling):
    # int() reads an Arabic-Indic or fullwidth digit, a `_` grouping or a sign as a number:
    # a shard id other than the one the operator meant to type.
    monkeypatch.setenv("PONYBOT_SHARD_COUNT", "64")
    monkeypatch.setenv("PONYBOT_SHARD_IDS", spelling)
    with pytest.raises(ConfigError, match=r"PONYBOT_SHARD_IDS: .*not a shard id"):
        with_shard_environment(load())
    with pytest.raises(ValueError, match="not a shard id"):
        DiscordConfig(shard_count=64, shard_ids=f"0,{spelling}")


def test_ranges_are_counted_as_they_expand_and_refused_past_max_shards():
    widest = f"0-{MAX_SHARDS - 1}"
    with pytest.raises(ValueError, match=f"more than {MAX_SHARDS} shard ids"):
        parse_shard_ids(",".join([widest] * 40))
    # Refused at the second range: the third part (a typo) is never reached.
    with pytest.raises(ValueError, match=f"more than {MAX_SHARDS} shard ids"):
        parse_shard_ids(f"{widest},{widest},zero")
    assert parse_shard_ids(widest) == list(range(MAX_SHARDS))


def test_an_environment_value_as_long_as_linux_allows_is_refused_naming_the_variable(
        monkeypatch):
    # 128 KiB (one environment string's limit) of the widest range: 16,000 ranges, a billion
    # ids if each were expanded. The error quotes the variable, not the value.
    monkeypatch.setenv("PONYBOT_SHARD_COUNT", str(MAX_SHARDS))
    monkeypatch.setenv("PONYBOT_SHARD_IDS", ",".join([f"0-{MAX_SHARDS - 1}"] * 16_000))
    with pytest.raises(ConfigError, match="PONYBOT_SHARD_IDS") as refused:
        with_shard_environment(load())
    assert len(str(refused.value)) < 1000


def test_an_empty_shard_variable_is_unset(monkeypatch):
    # `PONYBOT_SHARD_IDS=${PONYBOT_SHARD_IDS:-}` in a unit or compose file writes "".
    config = load()
    monkeypatch.setenv("PONYBOT_SHARD_IDS", "")
    monkeypatch.setenv("PONYBOT_SHARD_COUNT", "")
    assert with_shard_environment(config) is config
    assert ShardEnvironment(shard_ids=" ").shard_ids is None


# --- what every process does alone: only for its own servers ---------------------------------


async def pony_on(fake: FakeDiscord, shard: int, **options: object) -> FakeInteraction:
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    itx = await fake.invoke("pony", options, channel_id=CHANNELS[shard], user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def cancel(fake: FakeDiscord, itx: FakeInteraction) -> FakeInteraction:
    click = await fake.click(itx.original.id, f"pony:cancel:{queued_job_id(itx)}",
                             user_id=USER_ID)
    await click.wait_response(timeout=5)
    return click


async def test_a_queued_message_is_edited_and_its_loss_told_once_by_its_servers_process(
        settings, fake, redis):
    async with two_bots(settings, fake) as bots:
        # Round robin: zero's first, one's first, zero's second, one's second.
        first = {k: await pony_on(fake, k) for k in (0, 1)}
        second = {k: await pony_on(fake, k) for k in (0, 1)}
        for itx in first.values():
            assert answered_once_on(await cancel(fake, itx), shard_for(itx.guild_id, SHARDS))
        cogs = [bot.get_cog("PositionsCog") for bot in bots]
        for cog in cogs:
            cog.min_gap_s = 0
        since = len(fake.requests)

        # Both processes' loops come round at once, as they will.
        edited = await asyncio.gather(*(cog.update_positions() for cog in cogs))

        assert edited == [1, 1]
        assert [edits_of(fake, second[k], since) for k in (0, 1)] == [1, 1]
        assert "next up" in second[0].original.content
        assert "position **2**" in second[1].original.content
        for k, cog in enumerate(cogs):  # each watches what it queued: its own servers' jobs
            assert {w.job.guild_id for w in cog.watched.values()} == {GUILDS[k]}
        assert all(answered_once_on(itx, k) for k in (0, 1) for itx in (first[k], second[k]))

        # Redis comes back empty (a failover to an empty replica): each waiting user is told
        # once, by the process that queued the job, however many processes look.
        assert await asyncio.gather(*(cog.tell_lost() for cog in cogs)) == [0, 0]
        await redis.flushall()
        assert await asyncio.gather(*(cog.tell_lost() for cog in cogs)) == [1, 1]
        assert await asyncio.gather(*(cog.tell_lost() for cog in cogs)) == [0, 0]
        for k in (0, 1):
            [notice] = second[k].followups
            assert notice.ephemeral and "lost track of your job" in notice.content


# --- two bot processes, two workers: every command answered once, every job posted once ------


def spawn_bot(config: Path, redis_url: str, shard: int) -> subprocess.Popen[bytes]:
    """`python -m bot` running shard `shard` of SHARDS, as an operator starts one per host."""
    env = dict(os.environ, DISCORD_TOKEN=BOT_TOKEN, REDIS_URL=redis_url,
               PONYBOT_SHARD_COUNT=str(SHARDS), PONYBOT_SHARD_IDS=str(shard),
               PONYBOT_LOG_LEVEL="WARNING")
    return subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config)], env=env,
                            stdin=subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def bot_processes(config: Path, fake: FakeDiscord,
                        redis_url: str) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    shards_world(fake)
    processes = [spawn_bot(config, redis_url, k) for k in range(SHARDS)]
    try:
        await fake.wait_for_shards(SHARDS, timeout=90)
        await fake.wait_for_commands(timeout=30)
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


def shown_message(itx: FakeInteraction) -> FakeMessage:
    assert itx.original is not None
    return itx.original


def shown(itx: FakeInteraction) -> str:
    return shown_message(itx).content


async def command(fake: FakeDiscord, name: str, where: int | None,
                  options: dict[str, object] | None = None) -> FakeInteraction:
    """`name` by an admin in the server on shard `where` (None: in a DM), answered."""
    if where is None:
        itx = await fake.invoke(name, options, guild_id=None, user_id=USER_ID)
    else:
        itx = await fake.invoke(name, options, channel_id=CHANNELS[where], user_id=USER_ID,
                                permissions=ADMINISTRATOR)
    await itx.wait_response(timeout=15)
    return itx


async def test_two_bot_processes_answer_every_command_once_and_post_every_job_once(
        tmp_path, tiny_pipeline_dir, fake, settings, redis: Redis, redis_server, start_worker):
    config = write_config_toml(tmp_path / "config.toml", tiny_pipeline_dir, fake)
    with config.open("a") as file:  # the fake's "CDN", for the Parameters menu's download
        file.write(f"\n[uploads]\nhosts = {json.dumps(settings.config.uploads.hosts)}\n")
    use_endpoints(settings.config.discord)  # the workers' REST, in this process
    reads = QueueReads(redis, Keys())
    async with bot_processes(config, fake, redis_server.url):
        await start_worker("gpu-0")
        await start_worker("gpu-1")
        answered: list[tuple[FakeInteraction, int]] = []  # with the shard that must answer
        jobs: list[str] = []

        async def on(where: int | None, name: str, **options: object) -> FakeInteraction:
            itx = await command(fake, name, where, options)
            answered.append((itx, 0 if where is None else where))
            if name == "pony":
                jobs.append(queued_job_id(itx))
            return itx

        # Shard one's server pauses its queue (process one); its /pony waits while shard
        # zero's and a DM's are drawn by whichever worker is free.
        await on(1, "queue pause")
        held = await on(1, "pony", tags="rarity, solo")
        drawn = [await on(0, "pony", tags="applejack, solo"),
                 await on(None, "pony", tags="fluttershy, solo")]
        await until_finished(redis, jobs[1:], within_s=120)
        still = await reads.state(jobs[0])
        assert still is not None and still.status is JobStatus.QUEUED
        assert "paused" in shown(await on(1, "queue show"))
        assert "The queue is empty" in shown(await on(0, "queue show"))
        await on(1, "queue resume")
        await until_finished(redis, jobs, within_s=120)

        # Persistent buttons on both shards' results: a click reaches its server's process.
        for itx, job_id, where in ((drawn[0], jobs[1], 0), (held, jobs[0], 1)):
            assert itx.original is not None
            click = await fake.click(itx.original.id, f"pony:reroll:{job_id}", user_id=USER_ID)
            await click.wait_response(timeout=15)
            answered.append((click, where))
            jobs.append(queued_job_id(click))
        # The Parameters menu on shard one's result, and its Draw this button.
        assert held.original is not None
        menu = await fake.invoke_on_message("Parameters", held.original.id, user_id=USER_ID)
        await menu.wait_response(timeout=15)
        await fake.wait_for(lambda: menu.original is not None and menu.original.edits, timeout=30)
        answered.append((menu, 1))
        [draw] = [c["custom_id"] for row in shown_message(menu).components
                  for c in row["components"]]
        click = await fake.click(shown_message(menu).id, draw, user_id=USER_ID)
        await click.wait_response(timeout=15)
        answered.append((click, 1))
        jobs.append(queued_job_id(click))
        for where in (0, 1):
            await on(where, "settings show")
        statuses = await until_finished(redis, jobs, within_s=120)

    assert statuses == [JobStatus.POSTED] * len(jobs) and len(set(jobs)) == len(jobs) == 6
    assert [results_shown(fake, job_id) for job_id in jobs] == [1] * len(jobs)
    wrong = [(itx.name, itx.delivered_to, len(itx.callback_attempts), where)
             for itx, where in answered if not answered_once_on(itx, where)]
    assert not wrong
    assert not fake.errors


async def test_a_bot_that_discord_says_needs_more_shards_stops_with_what_to_set(
        tmp_path, tiny_pipeline_dir, fake, redis_server):
    # Discord closes a session that would hold too many servers with 4011 ("sharding
    # required"); restarting the same process cannot help, so it is a problem for the operator
    # (exit status 2, one line), not a crash for `ponybot up` to restart over and over.
    fake.max_guilds_per_session = 1  # the world has two servers on shard 1 of 2, one each here
    config = write_config_toml(tmp_path / "config.toml", tiny_pipeline_dir, fake)
    env = dict(os.environ, DISCORD_TOKEN=BOT_TOKEN, REDIS_URL=redis_server.url,
               PONYBOT_SHARD_COUNT="1", PONYBOT_LOG_LEVEL="WARNING")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(config), env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 2
    assert "sharding" in stderr.decode().splitlines()[-1]
    assert "PONYBOT_SHARD_COUNT" in stderr.decode().splitlines()[-1]
