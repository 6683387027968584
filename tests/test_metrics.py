"""Prometheus `/metrics` and `/healthz` on the bot and on a worker: the numbers move with the
work (real discord.py against the fake Discord, real Redis, the tiny pipeline), and the health
check fails when the event loop is stuck or Redis is gone. The Grafana dashboard only asks for
metrics that exist."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bot import metrics as bot_metrics
from inference.loop import metrics as worker_metrics
from ponybot_cli.redis_server import RedisServer, free_port
from ponybot_core import metrics
from ponybot_core.config import ConfigError, MetricsConfig
from ponybot_core.keys import Keys
from ponybot_core.processes import EXIT_CONFIG, run_process
from ponybot_core.queue import Producer, QueueReads
from ponybot_core.queue.reads import WAITING_SAMPLE, Waiting
from ponybot_core.redis_client import bot_redis
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.world import BOT_TOKEN, CHANNEL_ID, GUILD_ID, USER_ID, make_job
from tests.conftest import pony, queued_job_id, result, write_config_toml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
# Short health bounds: the stuck-loop test waits this long for the loop, once. Every scrape
# reads the queue anew (none reuses the last read), as the tests scrape right after a change.
TEST_METRICS = MetricsConfig(bot_port=0, worker_port=0, loop_timeout_s=0.3, redis_timeout_s=1.0,
                             queue_read_reuse_s=0)

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


# --- Hostile scrapers and connections ----------------------------------------------------------


class CountedReads(QueueReads):
    """The real queue reads, counting `waiting_by_model` calls; each waits for `release` (set
    on the loop) so that every scrape of a burst has arrived before any read ends."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        super().__init__(redis, keys)
        self.release = asyncio.Event()
        self.calls = 0

    async def waiting_by_model(self, *, sample: int = WAITING_SAMPLE) -> Waiting:
        self.calls += 1
        await self.release.wait()
        return await super().waiting_by_model(sample=sample)


class CountedGauges(bot_metrics.QueueGauges):
    """The bot's queue gauges, counting the scrapes that reached them."""

    def __init__(self, reads: QueueReads, loop: asyncio.AbstractEventLoop, *,
                 reuse_s: float) -> None:
        super().__init__(reads, loop, reuse_s=reuse_s)
        self.arrived = threading.Semaphore(0)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.arrived.release()
        yield from super().collect()


async def connected_clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["connected_clients"])


async def test_concurrent_scrapes_share_one_queue_read_on_one_redis_connection(
        redis_server: RedisServer, redis: Redis):
    burst = 8
    producer = Producer(redis, Keys(), result_ttl_s=60)
    for i in range(3):
        await producer.enqueue(make_job(interaction_id=100 + i, guild_id=10 + i))
    bots_client = bot_redis(redis_server.url)  # the bot's own pool of 32, empty so far
    reads = CountedReads(bots_client, Keys())
    gauges = CountedGauges(reads, asyncio.get_running_loop(), reuse_s=0)  # in flight only
    server = metrics.MetricsServer(lambda: (True, "ok"), collectors=[gauges],
                                   registry=CollectorRegistry(), max_per_peer=burst)
    port = server.start("127.0.0.1", 0)
    before = await connected_clients(redis)
    try:
        bodies: list[str] = []
        # Threads of their own: asyncio's default executor has fewer than `burst` on 2 CPUs.
        scrapers = [threading.Thread(target=lambda: bodies.append(get(port, "/metrics")[1]))
                    for _ in range(burst)]
        for scraper in scrapers:
            scraper.start()
        for _ in range(burst):  # every scrape of the burst is in the collector
            assert await asyncio.to_thread(gauges.arrived.acquire, timeout=30)
        reads.release.set()
        for scraper in scrapers:
            await asyncio.to_thread(scraper.join)
        answers = [{(s.name, frozenset(s.labels.items())): s.value
                    for family in text_string_to_metric_families(body) for s in family.samples}
                   for body in bodies]

        assert reads.calls == 1
        assert [value(a, "ponybot_queue_jobs") for a in answers] == [3] * burst
        assert await connected_clients(redis) - before <= 1
    finally:
        await asyncio.to_thread(server.close)
        await bots_client.aclose()


async def test_scrapes_in_a_loop_read_the_queue_once_per_reuse_interval(redis: Redis):
    reads = CountedReads(redis, Keys())
    reads.release.set()
    gauges = CountedGauges(reads, asyncio.get_running_loop(), reuse_s=60)
    server = metrics.MetricsServer(lambda: (True, "ok"), collectors=[gauges],
                                   registry=CollectorRegistry())
    port = server.start("127.0.0.1", 0)
    try:
        for _ in range(5):
            assert value(await scrape(port), "ponybot_queue_jobs") == 0
        assert reads.calls == 1
    finally:
        await asyncio.to_thread(server.close)


async def test_a_scrape_that_gave_up_leaves_no_unretrieved_error_on_the_loop():
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    stuck, release, failed = threading.Event(), threading.Event(), asyncio.Event()

    async def read() -> int:
        failed.set()
        raise ConnectionError("the pool had no connection for it")  # after the scrape gave up

    def block_the_loop() -> None:
        stuck.set()
        release.wait(60)

    def scrape_gives_up() -> None:
        assert stuck.wait(30)
        try:
            with pytest.raises(TimeoutError):
                metrics.on_loop(loop, read, 0.01)
        finally:
            release.set()

    try:
        loop.call_soon(block_the_loop)
        await asyncio.to_thread(scrape_gives_up)
        await failed.wait()
        for _ in range(3):  # the failed task's last steps
            await asyncio.sleep(0)
        gc.collect()
        assert errors == []
    finally:
        loop.set_exception_handler(previous)


def handler_threads(port: int) -> int:
    """The threads serving connections to the metrics server on `port`."""
    name = f"{metrics.CONNECTION_THREAD}:{port}"
    return sum(t.name == name for t in threading.enumerate())


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this connection (EOF), waiting for it at most 30 s."""
    sock.settimeout(30)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_past_the_cap_are_closed_at_once_and_hold_no_thread():
    cap = 4
    server = metrics.MetricsServer(lambda: (True, "ok"), registry=CollectorRegistry(),
                                   max_connections=cap, max_per_peer=cap, read_timeout_s=60)
    port = server.start("127.0.0.1", 0)
    sockets = []
    try:
        for i in range(cap + 20):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /metr" if i % 2 else b"")  # half a request line, then silence
            sockets.append(sock)
        # Accepted in order: once the last is closed, every one before it was handled.
        assert all(closed_by_server(sock) for sock in sockets[cap:])
        assert handler_threads(port) == cap
    finally:
        for sock in sockets:
            sock.close()
        server.close()


def test_a_silent_connection_is_closed_after_the_read_timeout_and_frees_its_place():
    server = metrics.MetricsServer(lambda: (True, "ok"), registry=CollectorRegistry(),
                                   max_connections=1, read_timeout_s=0.2)
    port = server.start("127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", port)) as silent:
            silent.sendall(b"GET /heal")
            assert closed_by_server(silent)
        assert get(port, "/healthz") == (200, "ok\n")
    finally:
        server.close()


def test_a_trickling_connection_is_cut_off_at_its_deadline():
    server = metrics.MetricsServer(lambda: (True, "ok"), registry=CollectorRegistry(),
                                   read_timeout_s=60, deadline_s=0.2)
    port = server.start("127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", port)) as trickling:
            trickling.sendall(b"G")  # then nothing: the deadline ends it, not the read timeout
            assert closed_by_server(trickling)
        assert handler_threads(port) <= 1  # its thread is on its way out, the only one
    finally:
        server.close()


def test_one_address_cannot_take_every_place():
    server = metrics.MetricsServer(lambda: (True, "ok"), registry=CollectorRegistry(),
                                   max_connections=8, max_per_peer=2, read_timeout_s=60)
    port = server.start("127.0.0.1", 0)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    other = socket.socket()
    try:
        other.bind(("127.0.0.2", 0))  # another peer (Linux routes all of 127/8 to loopback)
        other.connect(("127.0.0.1", port))
        other.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        other.settimeout(30)
        assert other.recv(12) == b"HTTP/1.0 200"
        assert closed_by_server(sockets[2])
        assert handler_threads(port) >= 2  # the first two still held
    finally:
        for sock in [*sockets, other]:
            sock.close()
        server.close()


def test_the_handler_reads_with_a_timeout_by_default():
    assert metrics.READ_TIMEOUT_S is not None and 0 < metrics.READ_TIMEOUT_S <= 10
    assert 0 < metrics.CONNECTION_DEADLINE_S <= 60
    assert 0 < metrics.MAX_CONNECTIONS_PER_PEER < metrics.MAX_CONNECTIONS <= 64


@pytest.mark.parametrize(("bind", "why"), [("not-a-host", "not an IP address"),
                                           ("192.0.2.1", "cannot listen")])
async def test_an_unusable_metrics_bind_is_a_config_problem_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bind: str,
        why: str):
    monkeypatch.setenv("PONYBOT_METRICS_BIND", bind)

    async def start() -> int:
        server = metrics.serve(TEST_METRICS, "bot", redis=None)  # type: ignore[arg-type]
        assert server is None, "it listened"
        return 0

    status = await asyncio.to_thread(run_process, start(), "bot")

    assert status == EXIT_CONFIG == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "PONYBOT_METRICS_BIND" in lines[0] and bind in lines[0] and why in lines[0]


async def test_a_bad_bind_in_the_config_file_is_named_as_the_config_settings(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PONYBOT_METRICS_BIND", raising=False)
    with pytest.raises(ConfigError, match=r"\[metrics\] bind"):
        metrics.serve(MetricsConfig(bind="no such host.invalid", bot_port=0), "bot",
                      redis=None)  # type: ignore[arg-type]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_an_ipv6_bind_serves_health():
    server = metrics.MetricsServer(lambda: (True, "ok"), registry=CollectorRegistry())
    port = server.start("::1", 0)
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=30) as reply:
            assert (reply.status, reply.read()) == (200, b"ok\n")
    finally:
        server.close()


async def test_the_scrape_read_never_reads_more_jobs_than_its_sample_however_many_servers_wait(
        redis: Redis):
    servers, sample = 30, 10
    producer = Producer(redis, Keys(), result_ttl_s=60)
    for i in range(servers):  # one job in each of more servers than the sample
        await producer.enqueue(make_job(interaction_id=100 + i, guild_id=10 + i))
    await redis.config_resetstat()

    waiting = await QueueReads(redis, Keys()).waiting_by_model(sample=sample)

    stats = await redis.info("commandstats")
    assert int(stats.get("cmdstat_hmget", {}).get("calls", 0)) <= sample
    assert waiting.jobs == servers  # exact: every list's length
    assert waiting.by_model == {"tiny": pytest.approx(servers)}  # scaled from the sample


def test_up_gives_the_bot_the_base_port_and_each_worker_the_next_ones(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PONYBOT_METRICS_PORT", "9800")
    config = MetricsConfig()
    _, bot = metrics.listen_address(config, "bot")  # the bot child has the same environment
    workers = [int(metrics.worker_port_environment(config, i)["PONYBOT_METRICS_PORT"])
               for i in range(3)]
    assert [bot, *workers] == [9800, 9801, 9802, 9803]
