"""Prometheus `/metrics` and `/healthz` on the bot and on a worker: the numbers move with the
work (real discord.py against the fake Discord, real Redis, the tiny pipeline), and the health
check fails when the event loop is stuck or Redis is gone. The Grafana dashboard only asks for
metrics that exist."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bot import metrics as bot_metrics
from inference import metrics as worker_metrics
from ponybot_cli.redis_server import RedisServer, free_port
from ponybot_core import metrics
from ponybot_core.config import ConfigError, MetricsConfig
from ponybot_core.keys import Keys
from ponybot_core.queue import Producer
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.world import BOT_TOKEN, CHANNEL_ID, GUILD_ID, USER_ID
from tests.conftest import pony, queued_job_id, result, write_config_toml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
# Short health bounds: the stuck-loop test waits this long for the loop, once.
TEST_METRICS = MetricsConfig(bot_port=0, worker_port=0, loop_timeout_s=0.3, redis_timeout_s=1.0)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; blocking (call it off the loop)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def scrape(port: int) -> Samples:
    """Every sample /metrics shows. From a thread: the bot's collectors read Redis on the
    event loop, which must stay free to run them."""
    status, text = await asyncio.to_thread(get, port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def bot_port(bot: object) -> AsyncIterator[int]:
    """The in-process bot's metrics server, as `python -m bot` starts it (on a free port)."""
    server = bot_metrics.serve(TEST_METRICS, bot.queue_reads, bot.redis)  # type: ignore[attr-defined]
    assert server is not None
    yield server.port
    await asyncio.to_thread(server.close)


@pytest.fixture
async def worker_port(start_worker: object) -> AsyncIterator[int]:
    """A running in-process worker and its metrics server."""
    running = await start_worker()  # type: ignore[operator]
    worker = running.worker
    server = worker_metrics.serve(TEST_METRICS, worker.redis, worker.placement.device)
    assert server is not None
    yield server.port
    await asyncio.to_thread(server.close)


async def test_a_pony_raises_the_interactions_counter_and_the_ack_histogram(fake: FakeDiscord,
                                                                            bot_port: int):
    before = await scrape(bot_port)

    await pony(fake)

    after = await scrape(bot_port)
    assert value(after, "ponybot_interactions_total", command="pony") == \
        value(before, "ponybot_interactions_total", command="pony") + 1
    assert value(after, "ponybot_ack_seconds_count", command="pony") == \
        value(before, "ponybot_ack_seconds_count", command="pony") + 1
    # Answered well within Discord's 3 seconds: the sample fell in a bucket below it.
    assert value(after, "ponybot_ack_seconds_bucket", command="pony", le="3.0") == \
        value(before, "ponybot_ack_seconds_bucket", command="pony", le="3.0") + 1


async def test_a_refusal_raises_refusals_by_command_and_reason(fake: FakeDiscord, bot_port: int,
                                                               redis: Redis):
    labels = {"command": "pony", "reason": "invalid_request"}
    before = await scrape(bot_port)

    # What Discord's client would refuse to send (a stale command list): the bot checks too.
    itx = await fake.invoke("pony", {"tags": "pony", "steps": 0}, guild_id=GUILD_ID,
                            channel_id=CHANNEL_ID, user_id=USER_ID, validate=False)
    await itx.wait_response(timeout=5)

    assert itx.ephemeral
    after = await scrape(bot_port)
    assert value(after, "ponybot_refusals_total", **labels) == \
        value(before, "ponybot_refusals_total", **labels) + 1
    assert await redis.xlen(Keys().stream) == 0


async def test_labels_name_a_button_or_form_by_its_action_never_by_a_job_or_a_made_up_id(
        fake: FakeDiscord, bot_port: int):
    itx = await pony(fake)
    job_id = queued_job_id(itx)
    before = await scrape(bot_port)

    click = await fake.click(itx.original.id, f"pony:cancel:{job_id}", user_id=USER_ID)
    await click.wait_response(timeout=5)
    # A form nobody was shown (a client may send any custom_id here): the bot does not answer
    # it, and counts it as `other`.
    await fake.submit_modal("pony:" + "x" * 90, {"tags": "pony"}, channel_id=CHANNEL_ID,
                            user_id=USER_ID)

    async def counted() -> Samples:
        while True:
            samples = await scrape(bot_port)
            if value(samples, "ponybot_interactions_total", command="other") > \
                    value(before, "ponybot_interactions_total", command="other"):
                return samples

    after = await asyncio.wait_for(counted(), 10)
    for label in ("button:cancel", "other"):
        assert value(after, "ponybot_interactions_total", command=label) == \
            value(before, "ponybot_interactions_total", command=label) + 1
    assert not any(job_id in str(labels) or "xxx" in str(labels) for _, labels in after)


async def test_queue_depth_and_paused_servers_reflect_the_queue(fake: FakeDiscord, bot_port: int,
                                                                redis: Redis):
    empty = await scrape(bot_port)
    assert value(empty, "ponybot_queue_jobs") == 0

    for seed in (1, 2, 3):  # no worker runs: they wait
        await pony(fake, seed=seed)
    await Producer(redis, Keys(), result_ttl_s=60).pause(GUILD_ID)

    queued = await scrape(bot_port)
    assert value(queued, "ponybot_queue_jobs") == 3
    assert value(queued, "ponybot_queue_depth", model="tiny") == 3
    assert value(queued, "ponybot_queue_oldest_wait_seconds", model="tiny") >= 0
    assert value(queued, "ponybot_paused_servers") == 1
    assert value(queued, "ponybot_paused_globally") == 0


async def test_a_drawn_job_raises_posted_jobs_sampling_seconds_and_batch_sizes(
        fake: FakeDiscord, bot: object, worker_port: int):
    sampled = {"model": "tiny", "size": "square"}
    before = await scrape(worker_port)

    await result(fake, await pony(fake, count=2))

    # The worker counts the job right after recording it; the message shows a moment before.
    async def posted() -> Samples:
        while True:
            after = await scrape(worker_port)
            if value(after, "ponybot_jobs_total", outcome="posted") > \
                    value(before, "ponybot_jobs_total", outcome="posted"):
                return after

    after = await asyncio.wait_for(posted(), 30)
    assert value(after, "ponybot_jobs_total", outcome="posted") == \
        value(before, "ponybot_jobs_total", outcome="posted") + 1
    assert value(after, "ponybot_sampling_seconds_per_image_count", **sampled) == \
        value(before, "ponybot_sampling_seconds_per_image_count", **sampled) + 2
    assert value(after, "ponybot_batch_images_sum") == value(before, "ponybot_batch_images_sum") + 2
    assert value(after, "ponybot_queue_wait_seconds_count", model="tiny") == \
        value(before, "ponybot_queue_wait_seconds_count", model="tiny") + 1
    assert await asyncio.to_thread(get, worker_port, "/healthz") == (200, "ok\n")


async def test_healthz_is_ok_then_fails_while_the_event_loop_is_stuck(bot_port: int):
    assert await asyncio.to_thread(get, bot_port, "/healthz") == (200, "ok\n")
    stuck, release = threading.Event(), threading.Event()

    def block_the_loop() -> None:
        stuck.set()
        release.wait(60)  # what a blocking call on the loop does to everything else

    def probe_while_stuck() -> tuple[int, str]:
        assert stuck.wait(30)
        try:
            return get(bot_port, "/healthz")
        finally:
            release.set()

    asyncio.get_running_loop().call_soon(block_the_loop)
    status, why = await asyncio.to_thread(probe_while_stuck)

    assert status == 503
    assert "event loop is stuck" in why
    assert await asyncio.to_thread(get, bot_port, "/healthz") == (200, "ok\n")


async def test_healthz_fails_while_redis_is_stopped_and_counts_the_redis_errors(
        bot_port: int, redis_server: RedisServer):
    before = await scrape(bot_port)
    await asyncio.to_thread(redis_server.stop)
    try:
        status, why = await asyncio.to_thread(get, bot_port, "/healthz")
    finally:
        await asyncio.to_thread(redis_server.start)

    assert status == 503
    assert "Redis is unreachable" in why
    assert redis_server.url.split("@")[-1] not in why  # says what, never where or with what
    after = await scrape(bot_port)
    errors = sum(v for (name, _), v in after.items() if name == "ponybot_redis_errors_total")
    errors_before = sum(v for (name, _), v in before.items()
                        if name == "ponybot_redis_errors_total")
    assert errors > errors_before
    assert await asyncio.to_thread(get, bot_port, "/healthz") == (200, "ok\n")


async def test_an_unknown_path_is_not_found_and_reveals_nothing(bot_port: int):
    status, body = await asyncio.to_thread(get, bot_port, "/debug")
    assert status == 404
    assert body == "/metrics or /healthz\n"


# --- Where each process listens -------------------------------------------------------------


def test_the_environment_port_overrides_the_configs_for_either_process(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PONYBOT_METRICS_PORT", raising=False)  # the tests' own (conftest)
    config = MetricsConfig()
    assert metrics.listen_address(config, "bot") == ("127.0.0.1", config.bot_port)
    assert metrics.listen_address(config, "worker") == ("127.0.0.1", config.worker_port)
    monkeypatch.setenv("PONYBOT_METRICS_PORT", "9999")
    monkeypatch.setenv("PONYBOT_METRICS_BIND", "0.0.0.0")
    assert metrics.listen_address(config, "worker") == ("0.0.0.0", 9999)
    for bad in ("http", "70000", "-1"):
        monkeypatch.setenv("PONYBOT_METRICS_PORT", bad)
        with pytest.raises(ConfigError, match="PONYBOT_METRICS_PORT"):
            metrics.listen_address(config, "bot")


def test_each_worker_ponybot_up_starts_gets_the_next_port(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PONYBOT_METRICS_PORT", raising=False)
    ports = [metrics.worker_port_environment(MetricsConfig(worker_port=9751), i)
             for i in range(3)]
    assert ports == [{"PONYBOT_METRICS_PORT": p} for p in ("9751", "9752", "9753")]
    monkeypatch.setenv("PONYBOT_METRICS_PORT", "0")
    assert metrics.worker_port_environment(MetricsConfig(), 2) == {"PONYBOT_METRICS_PORT": "0"}


def test_a_second_process_on_a_taken_port_serves_on_a_free_one():
    def fine() -> tuple[bool, str]:
        return True, "ok"

    first, second = metrics.MetricsServer(fine), metrics.MetricsServer(fine)
    try:
        port = first.start("127.0.0.1", 0)
        other = second.start("127.0.0.1", port)
        assert other not in (0, port)
        assert get(port, "/healthz") == get(other, "/healthz") == (200, "ok\n")
    finally:
        first.close()
        second.close()


def test_metrics_can_be_turned_off():
    assert metrics.serve(MetricsConfig(enabled=False), "bot", redis=None) is None  # type: ignore[arg-type]


# --- The dashboard ----------------------------------------------------------------------------


def exposed_names() -> set[str]:
    """Every sample name ponybot_core/metrics.py's metrics and collectors expose."""
    suffixes = {Counter: ("_total",), Histogram: ("_bucket", "_count", "_sum")}
    names = set(metrics.COLLECTED)
    for item in vars(metrics).values():
        for kind, ends in suffixes.items():
            if isinstance(item, kind):
                for family in item.describe():
                    names.update(family.name + end for end in ends)
    return names


def panel_queries(dashboard: dict[str, object]) -> Iterator[str]:
    def panels(node: object) -> Iterator[dict[str, object]]:
        if isinstance(node, dict):
            if "targets" in node:
                yield node
            for child in node.get("panels", []):
                yield from panels(child)
        elif isinstance(node, list):
            for child in node:
                yield from panels(child)

    for panel in panels(dashboard):
        for target in panel["targets"]:  # type: ignore[union-attr]
            yield target["expr"]  # type: ignore[index]


def test_every_metric_the_dashboard_queries_exists():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = list(panel_queries(dashboard))
    asked = {name for q in queries for name in re.findall(r"\bponybot_[a-z_]+", q)}

    assert len(queries) >= 10
    assert asked - exposed_names() == set()
    # Every metric defined is on the dashboard somewhere.
    defined = {n.removesuffix(end) for n in exposed_names()
               for end in ("_total", "_bucket", "_count", "_sum") if n.endswith(end)}
    defined |= set(metrics.COLLECTED)
    shown = {n for n in defined if any(re.search(rf"\b{n}(_[a-z]+)?\b", q) for q in queries)}
    assert defined - shown == set()


def test_the_prometheus_example_scrapes_both_default_ports():
    text = (ROOT / "monitoring" / "prometheus.yml").read_text(encoding="utf-8")
    config = MetricsConfig()
    assert f":{config.bot_port}" in text and f":{config.worker_port}" in text


# --- Real processes ---------------------------------------------------------------------------


def spawn(module: str, config: Path, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    """`python -m <module>` as a real process, its metrics on `port`."""
    env = dict(os.environ, DISCORD_TOKEN=BOT_TOKEN, REDIS_URL=redis_url, HF_HUB_OFFLINE="1",
               PONYBOT_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1", PONYBOT_METRICS_PORT=str(port))
    return subprocess.Popen([sys.executable, "-m", module, "--config", str(config)], env=env,
                            stdin=subprocess.DEVNULL)


async def answers(port: int, path: str, *, within_s: float = 90) -> tuple[int, str]:
    """The first answer of a process's server once it listens (it starts with the process)."""
    async def first() -> tuple[int, str]:
        while True:
            try:
                return await asyncio.to_thread(get, port, path)
            except urllib.error.URLError:
                await asyncio.sleep(0.1)

    return await asyncio.wait_for(first(), within_s)


async def test_the_bot_and_worker_processes_serve_metrics_and_health(
        fake: FakeDiscord, tmp_path: Path, tiny_pipeline_dir: Path, redis_server: RedisServer,
        redis: Redis):
    config = write_config_toml(tmp_path / "config.toml", tiny_pipeline_dir, fake)
    bot_port, worker_port = free_port(), free_port()
    processes = [spawn("bot", config, redis_server.url, bot_port),
                 spawn("inference", config, redis_server.url, worker_port)]
    try:
        await fake.wait_for_bot(timeout=60)
        await fake.wait_for_commands(timeout=30)
        assert await answers(bot_port, "/healthz") == (200, "ok\n")
        assert await answers(worker_port, "/healthz") == (200, "ok\n")

        await result(fake, await pony(fake), within_s=90)

        bot_side = await scrape(bot_port)
        assert value(bot_side, "ponybot_interactions_total", command="pony") == 1
        assert value(bot_side, "ponybot_ack_seconds_count", command="pony") == 1

        async def posted() -> Samples:
            while True:
                samples = await scrape(worker_port)
                if value(samples, "ponybot_jobs_total", outcome="posted") == 1:
                    return samples

        worker_side = await asyncio.wait_for(posted(), 30)
        # Its own process: the model it preloaded, once; nothing of the bot's.
        assert value(worker_side, "ponybot_model_loads_total", model="tiny", outcome="ok") == 1
        assert value(worker_side, "ponybot_interactions_total", command="pony") == 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.to_thread(process.wait, 30)
