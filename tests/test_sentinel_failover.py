"""A highly available Redis, for real: a primary, a replica and three sentinels on loopback
(ponybot_testkit/sentinel_cluster.py), the bot (real discord.py against the fake Discord) and
workers drawing with the tiny pipeline, all reaching Redis through redis-py's Sentinel client.

The primary is killed (`kill -9`) mid-load; the bot and the workers follow the new primary by
themselves; every job the bot acknowledged is posted exactly once. A job is acknowledged only
once a replica has it (WAIT, ponybot_core/replicas.py): one no replica confirmed is refused and
taken back. A result whose record was lost with the old primary is drawn again and edited into
the same message, never shown twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError

from inference.loop.retrying import is_unavailable
from ponybot_cli.doctor import check_redis
from ponybot_core.config import Config, ConfigError, LoadedConfig, Secrets, load_config
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.keys import Keys
from ponybot_core.queue import JobStatus, QueueReads
from ponybot_core.redis_client import redis_target, worker_redis
from ponybot_testkit.fake_discord import FakeDiscord, FakeInteraction
from ponybot_testkit.sentinel_cluster import SERVICE, SentinelCluster
from ponybot_testkit.world import (
    BOT_TOKEN,
    CHANNEL_ID,
    OTHER_USER_ID,
    USER_ID,
    running_bot,
    tiny_config,
)
from tests.conftest import queued_job_id, results_shown, until_finished, write_config_toml
from tests.test_sharding import CHANNELS, SHARDS, answered_once_on, shards_world

QUEUE_UNAVAILABLE = "The queue is unavailable right now"


@contextlib.contextmanager
def started(cluster: SentinelCluster) -> Iterator[SentinelCluster]:
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with started(SentinelCluster(tmp_path / "ha")) as cluster:
        yield cluster


def sentinel_settings(tmp_path: Path, pipeline_dir: Path, fake: FakeDiscord | None,
                      cluster: SentinelCluster, **sentinel: object) -> LoadedConfig:
    """The tiny config reaching Redis through the cluster's sentinels, the passwords from the
    environment's secrets (never the file)."""
    addresses = [f"{host}:{port}" for host, port in cluster.service().sentinels]
    config = tiny_config(pipeline_dir, fake, redis={
        "sentinel": {"addresses": addresses, "service_name": SERVICE, **sentinel}})
    secrets = Secrets(DISCORD_TOKEN=BOT_TOKEN, REDIS_URL=None, REDIS_PASSWORD=cluster.password,
                      REDIS_SENTINEL_PASSWORD=cluster.sentinel_password)
    return LoadedConfig(config=config, secrets=secrets, path=tmp_path / "config.toml")


@contextlib.asynccontextmanager
async def primary_client(settings: LoadedConfig) -> AsyncIterator[Redis]:
    """The test's own view of the queue, through the sentinels like everyone's."""
    target = redis_target(settings)
    assert target is not None
    client = worker_redis(target, block_s=0)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running_workers(settings: LoadedConfig, model_cache: object,
                          count: int) -> AsyncIterator[list[asyncio.Task[None]]]:
    """`count` in-process workers with the production client (`worker_redis` on the
    sentinels). The first uses the session's tiny model; each other its own, as a worker
    process has (two drawing with one pipeline at once share its scheduler)."""
    from inference.models.cache import ModelCache
    from inference.models.device import choose_placement
    from inference.worker import Worker, logged_in_client

    target = redis_target(settings)
    assert target is not None
    use_endpoints(settings.config.discord)  # the workers' REST, in this process
    held = []
    for i in range(count):
        client = await logged_in_client(BOT_TOKEN)
        redis = worker_redis(target, block_s=settings.config.worker.block_ms / 1000)
        models = model_cache if i == 0 else ModelCache(
            settings.config, base_dir=settings.path.parent, placement=choose_placement("cpu"))
        # Loaded one after the other before any worker runs: loads in threads of one process
        # at once trip over each other (meta-device initialisation is process-wide).
        await models.get(settings.config.default_model)  # type: ignore[attr-defined]
        worker = Worker(settings, redis, client, name=f"ha-worker-{i}",
                        models=models)  # type: ignore[arg-type]
        held.append((worker, asyncio.create_task(worker.run()), client, redis))
    try:
        yield [task for _, task, _, _ in held]
    finally:
        for worker, task, client, redis in held:
            worker.stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
            await client.close()
            await redis.aclose()


async def pony(fake: FakeDiscord, seed: int, user_id: int = USER_ID) -> FakeInteraction:
    itx = await fake.invoke("pony", {"tags": "twilight sparkle, unicorn, solo", "seed": seed},
                            channel_id=CHANNEL_ID, user_id=user_id)
    await itx.wait_response(timeout=5)
    return itx


def acknowledged(itx: FakeInteraction) -> bool:
    """Queued, as the user saw it; else refused privately because the queue is unavailable."""
    if itx.ephemeral:
        assert QUEUE_UNAVAILABLE in itx.original.content, itx.original.content
        return False
    assert "Queued" in itx.original.content, itx.original.content
    return True


# --- A failover mid-load -------------------------------------------------------------------------


async def test_through_a_failover_every_acknowledged_job_is_posted_exactly_once(
        cluster, fake, tmp_path, tiny_pipeline_dir, model_cache):
    settings = sentinel_settings(tmp_path, tiny_pipeline_dir, fake, cluster)
    acked: list[str] = []
    refused = 0
    switched = asyncio.Event()
    acked_after_switch: list[str] = []
    enough = asyncio.Event()

    async def load(user_id: int, first_seed: int) -> None:
        nonlocal refused
        seed = first_seed
        while not enough.is_set():
            itx = await pony(fake, seed, user_id)
            seed += 2
            if not acknowledged(itx):
                refused += 1
                continue
            acked.append(queued_job_id(itx))
            if switched.is_set():
                acked_after_switch.append(acked[-1])
                if len(acked_after_switch) >= 6:
                    enough.set()

    async with running_bot(settings, fake), running_workers(settings, model_cache, 2) as workers:
        loads = [asyncio.create_task(load(USER_ID, 0)),
                 asyncio.create_task(load(OTHER_USER_ID, 1))]
        await fake.wait_for(lambda: len(acked) >= 8, timeout=30)
        subscription = await asyncio.to_thread(cluster.subscribe_switch)
        old = await asyncio.to_thread(cluster.kill_primary)
        await asyncio.to_thread(cluster.switched, subscription)
        switched.set()
        assert cluster.primary.port != old.port
        await asyncio.wait_for(asyncio.gather(*loads), 60)
        async with primary_client(settings) as redis:
            assert await until_finished(redis, acked, within_s=60) == \
                [JobStatus.POSTED] * len(acked)
        assert not any(task.done() for task in workers)  # they followed, none gave up
    # Every job the users were told was queued shows its result once, whichever primary held it.
    assert [results_shown(fake, job_id) for job_id in acked] == [1] * len(acked)
    assert len(acked_after_switch) >= 6


def spawn_bot(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config)], env=env,
                            stdin=subprocess.DEVNULL)


async def test_two_bot_processes_and_two_workers_serve_both_shards_through_a_failover(
        cluster, fake, tmp_path, tiny_pipeline_dir, model_cache):
    """The issue's whole picture: `python -m bot` twice, one shard each, both on the sentinels
    (the passwords in their environment only), two workers; the primary is killed mid-load.
    Every command is answered once by its shard's process, and every job acknowledged on
    either shard is posted exactly once."""
    config = write_config_toml(tmp_path / "config.toml", tiny_pipeline_dir, fake)
    addresses = [f"{host}:{port}" for host, port in cluster.service().sentinels]
    with config.open("a") as file:
        file.write(f"\n[redis.sentinel]\naddresses = {json.dumps(addresses)}\n"
                   f'service_name = "{SERVICE}"\n')
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DISCORD_TOKEN=BOT_TOKEN, REDIS_PASSWORD=cluster.password,
               REDIS_SENTINEL_PASSWORD=cluster.sentinel_password, PONYBOT_LOG_LEVEL="WARNING",
               PONYBOT_SHARD_COUNT=str(SHARDS), PONYBOT_METRICS_PORT="0")
    settings = sentinel_settings(tmp_path, tiny_pipeline_dir, fake, cluster)
    shards_world(fake)
    bots = [spawn_bot(config, {**env, "PONYBOT_SHARD_IDS": str(shard)})
            for shard in range(SHARDS)]
    answered: list[tuple[FakeInteraction, int]] = []
    acked: list[str] = []
    after_switch = {shard: 0 for shard in range(SHARDS)}
    switched = asyncio.Event()

    async def load(shard: int) -> None:
        seed = shard
        while not switched.is_set() or after_switch[shard] < 3:
            itx = await fake.invoke("pony", {"tags": "pony, solo", "seed": seed},
                                    channel_id=CHANNELS[shard], user_id=USER_ID)
            await itx.wait_response(timeout=15)
            seed += SHARDS
            answered.append((itx, shard))
            if acknowledged(itx):
                acked.append(queued_job_id(itx))
                after_switch[shard] += switched.is_set()

    try:
        await fake.wait_for_shards(SHARDS, timeout=90)
        await fake.wait_for_commands(timeout=30)
        async with running_workers(settings, model_cache, 2), primary_client(settings) as redis:
            loads = [asyncio.create_task(load(shard)) for shard in range(SHARDS)]
            await fake.wait_for(lambda: len(acked) >= 6, timeout=60)
            subscription = await asyncio.to_thread(cluster.subscribe_switch)
            await asyncio.to_thread(cluster.kill_primary)
            await asyncio.to_thread(cluster.switched, subscription)
            switched.set()
            await asyncio.wait_for(asyncio.gather(*loads), 90)
            assert await until_finished(redis, acked, within_s=90) == \
                [JobStatus.POSTED] * len(acked)
    finally:
        for process in bots:
            process.terminate()
        for process in bots:
            await asyncio.to_thread(process.wait, 30)
    assert [results_shown(fake, job_id) for job_id in acked] == [1] * len(acked)
    assert [(itx.name, shard) for itx, shard in answered if not answered_once_on(itx, shard)] \
        == []


# --- What "acknowledged" means --------------------------------------------------------------------


async def test_a_job_no_replica_confirmed_is_refused_and_taken_back(
        cluster, fake, tmp_path, tiny_pipeline_dir):
    """The replica is attached but stopped: a failover now would promote it without the job,
    so the user is not told "queued"; the job is cancelled, not left to run unannounced."""
    settings = sentinel_settings(tmp_path, tiny_pipeline_dir, fake, cluster, ack_timeout_ms=200)
    async with running_bot(settings, fake), primary_client(settings) as redis:
        assert acknowledged(await pony(fake, 1))
        cluster.pause_replica()
        try:
            itx = await pony(fake, 2)
        finally:
            cluster.resume_replica()
        assert not acknowledged(itx)
        snapshot = await QueueReads(redis, Keys()).snapshot(all_guilds=True)
        assert len(snapshot.queued) == 1  # the first; the refused one was taken back
        assert acknowledged(await pony(fake, 3))


async def test_a_job_acknowledged_while_the_replica_is_cut_off_survives_the_failover(
        cluster, fake, tmp_path, tiny_pipeline_dir):
    """The network between the primary and its replica breaks, then the primary dies: the
    sentinels promote the replica, which never saw what the primary wrote after the break.
    The bot did not tell anyone "queued" for those jobs (the replica was alive and promotable,
    and did not confirm them); every job it did acknowledge is on the new primary."""
    settings = sentinel_settings(tmp_path, tiny_pipeline_dir, fake, cluster, ack_timeout_ms=200)
    async with running_bot(settings, fake), primary_client(settings) as redis:
        itxs = [await pony(fake, 1)]
        await asyncio.to_thread(cluster.cut_replica)
        itxs += [await pony(fake, seed) for seed in range(2, 5)]
        subscription = await asyncio.to_thread(cluster.subscribe_switch)
        await asyncio.to_thread(cluster.kill_primary)
        await asyncio.to_thread(cluster.switched, subscription)
        itxs.append(await pony(fake, 9))  # the bot follows the new primary by itself
        acked = [queued_job_id(itx) for itx in itxs if acknowledged(itx)]
        states = await QueueReads(redis, Keys()).states(acked)
    assert acked[0] == queued_job_id(itxs[0]) and acked[-1] == queued_job_id(itxs[-1])
    assert [states[job_id] is not None for job_id in acked] == [True] * len(acked)


async def test_with_no_replica_attached_jobs_are_queued_without_waiting_for_one(
        cluster, fake, tmp_path, tiny_pipeline_dir):
    """After a failover the new primary stands alone until the old one returns as its replica:
    /pony keeps working, and does not pay a WAIT timeout per job."""
    settings = sentinel_settings(tmp_path, tiny_pipeline_dir, fake, cluster)
    replica = cluster.replica
    replica.process.kill()
    replica.process.wait()
    await asyncio.to_thread(cluster.wait_replica_down)  # until then it could be promoted
    async with running_bot(settings, fake):
        assert all([acknowledged(await pony(fake, seed)) for seed in range(6)])
    with cluster.node_client(cluster.primary) as primary:
        waits = primary.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    assert waits <= 1  # at most the first, before it re-read that none is attached


async def test_a_result_whose_record_was_lost_in_a_failover_is_not_shown_twice(
        fake, tmp_path, tiny_pipeline_dir, model_cache):
    """The replica has the jobs queued but not what the worker did with them (it was cut off
    while the worker drew, posted and acknowledged): after the failover the jobs are drawn
    again and edited into the same messages, so each result still shows once."""
    # A replica cut off for longer than 10 × down-after is never promoted: room for the draws.
    with started(SentinelCluster(tmp_path / "ha", down_after_ms=1500)) as cluster:
        settings = sentinel_settings(tmp_path, tiny_pipeline_dir, fake, cluster)
        async with running_bot(settings, fake), primary_client(settings) as redis:
            itxs = [await pony(fake, seed) for seed in range(3)]
            ids = [queued_job_id(itx) for itx in itxs]
            await asyncio.to_thread(cluster.sync_replica)  # the recorded messages too
            await asyncio.to_thread(cluster.cut_replica)
            async with running_workers(settings, model_cache, 1):
                assert await until_finished(redis, ids) == [JobStatus.POSTED] * 3
                edits_before = len(fake.requests)
                subscription = await asyncio.to_thread(cluster.subscribe_switch)
                await asyncio.to_thread(cluster.kill_primary)
                await asyncio.to_thread(cluster.switched, subscription)
                # The new primary had them queued: the worker follows it, draws them again.
                assert await until_finished(redis, ids) == [JobStatus.POSTED] * 3
    assert len(fake.requests) > edits_before
    assert [results_shown(fake, job_id) for job_id in ids] == [1] * 3


# --- Failover errors are outages, not bugs --------------------------------------------------------


async def test_a_write_refused_by_a_replica_is_waited_out_by_the_worker(cluster):
    """A plain REDIS_URL left pointing at a primary that was demoted answers READONLY: the
    worker waits it out as an outage instead of dying on it."""
    replica = Redis(host="127.0.0.1", port=cluster.replica.port, password=cluster.password)
    try:
        with pytest.raises(ReadOnlyError) as refused:
            await replica.set("ponybot:probe", "1")
    finally:
        await replica.aclose()
    assert is_unavailable(refused.value)


# --- `ponybot check` and the config ---------------------------------------------------------------


async def test_check_names_the_sentinels_reached_the_primary_and_its_replicas(
        cluster, tmp_path, tiny_pipeline_dir):
    settings = sentinel_settings(tmp_path, tiny_pipeline_dir, None, cluster)
    finding = await check_redis(settings)
    assert finding.status == "ok", finding
    assert "sentinels reached 3/3" in finding.detail
    assert f"primary 127.0.0.1:{cluster.primary.port}" in finding.detail
    assert f"replicas 127.0.0.1:{cluster.replica.port}" in finding.detail
    assert cluster.password not in finding.detail
    cluster.sentinels[0].process.kill()
    cluster.sentinels[0].process.wait()
    finding = await check_redis(settings)
    assert "sentinels reached 2/3" in finding.detail
    assert f"127.0.0.1:{cluster.sentinels[0].port}" in finding.detail


def test_sentinel_and_a_redis_url_at_once_are_refused(tmp_path, tiny_pipeline_dir):
    config = tiny_config(tiny_pipeline_dir, redis={"sentinel": {"addresses": ["10.0.0.1:26379"]}})
    loaded = LoadedConfig(config=config, path=tmp_path / "config.toml",
                          secrets=Secrets(REDIS_URL="redis://10.0.0.9:6379/0"))
    with pytest.raises(ConfigError, match="set one"):
        redis_target(loaded)


def test_a_sentinel_address_without_a_port_is_refused_naming_it(tiny_pipeline_dir):
    with pytest.raises(ValueError, match="'sentinel-1' is not host:port"):
        Config.model_validate({**tiny_config(tiny_pipeline_dir).model_dump(),
                               "redis": {"sentinel": {"addresses": ["sentinel-1"]}}})


def test_the_shipped_configs_sentinel_example_loads_as_written(tmp_path):
    """config.toml's commented [redis.sentinel] block, uncommented, is a valid config."""
    shipped = Path(__file__).parent.parent / "config.toml"
    lines = shipped.read_text().splitlines()
    start = lines.index("# [redis.sentinel]")
    for i in range(start, len(lines)):
        if not lines[i].startswith("# "):
            break
        lines[i] = lines[i].removeprefix("# ")
    edited = tmp_path / "config.toml"
    edited.write_text("\n".join(lines))
    sentinel = load_config(edited).redis.sentinel
    assert sentinel is not None and sentinel.service_name == "ponybot"
    assert sentinel.hosts() == [("10.0.0.11", 26379), ("10.0.0.12", 26379), ("10.0.0.13", 26379)]
