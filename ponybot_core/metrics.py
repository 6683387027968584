"""Prometheus metrics and `/healthz` for every process: the metrics, defined once by name (the
bot records some, the workers others, the Grafana dashboard in monitoring/ queries them), and
the small HTTP server each process runs them on.

The server runs in a thread of its own (a threaded WSGI server), never on the event loop:
`/healthz` asks the loop to run a callback and waits a bounded time, so a loop stuck in a
blocking call is reported as stuck instead of leaving the health check unanswered. Whoever can
reach the port gets little: each connection has a thread for at most `READ_TIMEOUT_S` of
silence, and past `MAX_CONNECTIONS` at once a connection is closed as soon as it is accepted.

Labels are bounded by what the code and the config define (commands, buttons, models, sizes,
outcomes, error classes): never a user id, a server id, a prompt or a token.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry

from ponybot_core.config import ConfigError, MetricsConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- The bot's ----------------------------------------------------------------------------------

INTERACTIONS = Counter(
    "ponybot_interactions", "Interactions received: slash commands, buttons and forms.",
    ["command"])
REFUSALS = Counter(
    "ponybot_refusals", "Interactions answered with a private refusal, by why.",
    ["command", "reason"])
# Discord gives an interaction 3 seconds to be acknowledged: the buckets are dense below it.
ACK_SECONDS = Histogram(
    "ponybot_ack_seconds",
    "From Discord creating an interaction (its id's timestamp) to our answer's callback "
    "returning.", ["command"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0))

# --- The workers' -------------------------------------------------------------------------------

JOBS = Counter("ponybot_jobs", "Jobs a worker finished, by how they ended.", ["outcome"])
# How a job held by a worker can end (`job_ended`): posted, cancelled while running, given up
# (dead-lettered), its picture withheld by the picture check, given back for another try, or
# dropped because another worker holds it now.
OUTCOMES = ("posted", "cancelled", "dead", "withheld", "retried", "dropped")
QUEUE_WAIT_SECONDS = Histogram(
    "ponybot_queue_wait_seconds",
    "From a job's creation to its sampling starting (its first try).",
    ["model"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
SAMPLING_SECONDS = Histogram(
    "ponybot_sampling_seconds_per_image",
    "Sampling time of one image (a pipeline call's time over its images).", ["model", "size"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60))
BATCH_IMAGES = Histogram(
    "ponybot_batch_images", "Images drawn by one pipeline call.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16))
BATCH_JOBS = Histogram(
    "ponybot_batch_jobs", "Jobs sharing one pipeline call.", buckets=(1, 2, 3, 4, 6, 8))
MODEL_LOADS = Counter(
    "ponybot_model_loads", "Cold loads of a model from disk, by outcome (ok, failed).",
    ["model", "outcome"])
MODEL_LOAD_SECONDS = Histogram(
    "ponybot_model_load_seconds", "Time a cold load of a model took.", ["model"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))

# --- Every process's ----------------------------------------------------------------------------

REDIS_ERRORS = Counter(
    "ponybot_redis_errors",
    "Redis commands that failed after redis-py's retries (Redis down, too slow, read-only "
    "during a failover...), by error class.", ["error"])

# Read at scrape time by collectors (bot.metrics, inference.loop.metrics): name -> (help, labels).
QUEUE_JOBS = "ponybot_queue_jobs"
QUEUE_DEPTH = "ponybot_queue_depth"
QUEUE_OLDEST_WAIT = "ponybot_queue_oldest_wait_seconds"
PAUSED_SERVERS = "ponybot_paused_servers"
PAUSED_GLOBALLY = "ponybot_paused_globally"
DEVICE_MEMORY = "ponybot_device_memory_bytes"
COLLECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    QUEUE_JOBS: ("Jobs waiting in the queue, every server's, paused or not.", ()),
    QUEUE_DEPTH: ("Jobs waiting for each model (estimated from a bounded sample of each "
                  "server's list when the queue is long).", ("model",)),
    QUEUE_OLDEST_WAIT: ("Age of the oldest waiting job for each model.", ("model",)),
    PAUSED_SERVERS: ("Servers whose queue is paused.", ()),
    PAUSED_GLOBALLY: ("1 while every server's queue is paused.", ()),
    DEVICE_MEMORY: ("Accelerator memory: allocated and reserved by this worker's torch, free "
                    "and total on the device.", ("device", "kind")),
}

# The Redis errors that mean Redis cannot be reached or written right now (not Redis refusing
# one of our commands, which is a bug and not counted as an outage).
REDIS_OUTAGES: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
    redis_errors.TryAgainError, redis_errors.ClusterDownError, redis_errors.OutOfMemoryError)


def job_ended(outcome: str) -> None:
    """Count one job's end (one of `OUTCOMES`)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown job outcome {outcome!r}")
    JOBS.labels(outcome=outcome).inc()


def model_loaded(model_id: str, seconds: float, *, ok: bool) -> None:
    """Count a cold load and its time (the model id is one of the config's)."""
    MODEL_LOADS.labels(model=model_id, outcome="ok" if ok else "failed").inc()
    if ok:
        MODEL_LOAD_SECONDS.labels(model=model_id).observe(seconds)


class CountedRetry(Retry):
    """redis-py's retry policy, counting each command that still failed after it
    (`REDIS_ERRORS`): every command and pipeline of a client goes through `call_with_retry`."""

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[..., Any],
                              is_retryable: Callable[[Exception], bool] | None = None,
                              with_failure_count: bool = False) -> T:
        try:
            return await super().call_with_retry(do, fail, is_retryable, with_failure_count)
        except REDIS_OUTAGES as exc:
            REDIS_ERRORS.labels(error=type(exc).__name__).inc()
            raise


# --- Where each process listens ------------------------------------------------------------------


def listen_address(config: MetricsConfig, process: str) -> tuple[str, int]:
    """(bind address, port) for `process` ("bot" or "worker"): `[metrics]`, with
    PONYBOT_METRICS_BIND and PONYBOT_METRICS_PORT over it, so that several processes on one
    host each get their own port from one config file."""
    bind = os.environ.get("PONYBOT_METRICS_BIND") or config.bind
    port = config.bot_port if process == "bot" else config.worker_port
    raw = os.environ.get("PONYBOT_METRICS_PORT")
    if raw:
        try:
            port = int(raw)
        except ValueError:
            raise ConfigError(f"PONYBOT_METRICS_PORT={raw!r}: not a port number") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"PONYBOT_METRICS_PORT={raw!r}: not within 0..65535")
    return bind, port


def worker_port_environment(config: MetricsConfig, index: int) -> dict[str, str]:
    """PONYBOT_METRICS_PORT for the `index`-th worker (from 0) that `ponybot up` starts on
    this host, known in advance for Prometheus: the worker port and the ones after it (9751,
    9752, ...); with PONYBOT_METRICS_PORT=P set for `ponybot up`, the bot keeps P and the
    workers get P+1, P+2, ... (never the bot's). 0 stays 0 (each picks a free one)."""
    if os.environ.get("PONYBOT_METRICS_PORT"):
        _, base = listen_address(config, "bot")  # what the bot child, same environment, gets
        port = base + 1 + index if base else 0
    else:
        port = config.worker_port + index if config.worker_port else 0
    return {"PONYBOT_METRICS_PORT": str(min(port, 65535))}


def bind_setting() -> str:
    """Where the bind address came from, for a message about it."""
    return "PONYBOT_METRICS_BIND" if os.environ.get("PONYBOT_METRICS_BIND") else "[metrics] bind"


def resolve_bind(bind: str) -> tuple[socket.AddressFamily, str]:
    """(address family, address) to listen on for `bind`: an IP literal as it is (IPv6 ones
    on an IPv6 socket), a name resolved, its IPv4 address first (what "localhost" means to a
    scraper that asks 127.0.0.1). Raises socket.gaierror for neither."""
    try:
        literal = ipaddress.ip_address(bind)
    except ValueError:
        pass
    else:
        return (socket.AF_INET6 if literal.version == 6 else socket.AF_INET), str(literal)
    found = socket.getaddrinfo(bind or None, 0, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    found.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, address = found[0]
    return family, str(address[0])


# --- /healthz -------------------------------------------------------------------------------------


@dataclass
class Health:
    """Whether the process is fine, asked from the server's thread: the event loop runs a
    callback within `loop_timeout_s`, and Redis answers a PING (on the process's own client,
    so through its Sentinel or whatever it uses) within `redis_timeout_s`."""

    loop: asyncio.AbstractEventLoop
    redis: Redis
    loop_timeout_s: float = 2.0
    redis_timeout_s: float = 2.0
    # At most one check runs at a time; requests that waited for it share its answer.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: tuple[float, bool, str] = (0.0, False, "")

    def check(self) -> tuple[bool, str]:
        """(healthy, why) - the reason names the problem and nothing secret."""
        asked = time.monotonic()
        with self._lock:
            at, healthy, why = self._last
            if at >= asked:  # one that was running when this request came answers it
                return healthy, why
            healthy, why = self._check()
            self._last = (time.monotonic(), healthy, why)
            return healthy, why

    def _check(self) -> tuple[bool, str]:
        # 1. The event loop: it runs a callback soon, or everything on it is stuck.
        ran = threading.Event()
        try:
            self.loop.call_soon_threadsafe(ran.set)
        except RuntimeError:
            return False, "the event loop is closed"
        if not ran.wait(self.loop_timeout_s):
            return False, (f"the event loop is stuck: it did not run a callback within "
                           f"{self.loop_timeout_s:g} s")
        # 2. Redis, on the loop's own client.
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(self.redis.ping(), self.redis_timeout_s), self.loop)
        try:
            future.result(self.redis_timeout_s + self.loop_timeout_s)
        except Exception as exc:
            future.cancel()
            return False, f"Redis is unreachable ({type(exc).__name__})"
        return True, "ok"


def on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], Awaitable[T]],
            timeout_s: float) -> T:
    """Run `read()` on `loop` from another thread and wait for it at most `timeout_s`: how a
    collector reads Redis at scrape time through the process's own client."""
    async def bounded() -> tuple[bool, object]:
        # The read's error is handed back, never raised from the task: when the waiting
        # thread gave up first (a busy loop), nobody would retrieve it and asyncio would log
        # "Task exception was never retrieved" for every such scrape.
        try:
            return True, await asyncio.wait_for(read(), timeout_s)
        except Exception as exc:
            return False, exc

    future = asyncio.run_coroutine_threadsafe(bounded(), loop)
    try:
        ok, outcome = future.result(timeout_s + 1.0)
    finally:
        future.cancel()
    if not ok:
        raise cast(Exception, outcome)
    return cast(T, outcome)


# --- The server ---------------------------------------------------------------------------------


# A connection's thread waits this long at most for each read of its request, and the whole
# connection lasts this long at most (a client trickling a byte at a time is cut off too);
# at most this many connections are served at once, this many from one address: Prometheus
# and a health check need a few; idle or trickling connections cannot pile up threads, and
# one client cannot take every place.
READ_TIMEOUT_S = 5.0
CONNECTION_DEADLINE_S = 15.0
MAX_CONNECTIONS = 16
MAX_CONNECTIONS_PER_PEER = 4
# The name of a connection's thread (with the server's port): what each costs is countable.
CONNECTION_THREAD = "metrics-connection"


class _Quiet(WSGIRequestHandler):
    timeout = READ_TIMEOUT_S  # socketserver sets it on the connection before reading

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the log."""


class _BoundedServer(WSGIServer):
    """A WSGI server with a thread per connection, at most `max_connections` of them and
    `max_per_peer` from one address (one past either is closed as soon as it is accepted),
    each cut off `deadline_s` after it was accepted."""

    max_connections = MAX_CONNECTIONS
    max_per_peer = MAX_CONNECTIONS_PER_PEER
    deadline_s = CONNECTION_DEADLINE_S
    # Connections the kernel holds until accepted: socketserver's 5 made a burst's others
    # wait for a SYN retry (a second).
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._guard = threading.Lock()
        self._open: dict[socket.socket, tuple[str, float]] = {}  # -> (peer, deadline)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._guard:
            full = (len(self._open) >= self.max_connections or sum(
                p == peer for p, _ in self._open.values()) >= self.max_per_peer)
            if not full:
                self._open[request] = (peer, time.monotonic() + self.deadline_s)
        if full:
            self.shutdown_request(request)
            return
        threading.Thread(target=self._serve, args=(request, client_address), daemon=True,
                         name=f"{CONNECTION_THREAD}:{self.server_port}").start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._guard:
                del self._open[request]
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """Cut off connections past their deadline (serve_forever calls this between
        accepts, at least twice a second): their thread's blocked read or write ends."""
        now = time.monotonic()
        with self._guard:
            late = [sock for sock, (_, deadline) in self._open.items() if deadline <= now]
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went silent (the read timeout) or away: not our problem
        log.exception("metrics request from %s failed", client_address)


class MetricsServer:
    """`/metrics` (the registry) and `/healthz` on one port, in a daemon thread."""

    def __init__(self, health: Callable[[], tuple[bool, str]], *,
                 collectors: Sequence[Collector] = (),
                 registry: CollectorRegistry = REGISTRY,
                 max_connections: int = MAX_CONNECTIONS,
                 max_per_peer: int = MAX_CONNECTIONS_PER_PEER,
                 read_timeout_s: float = READ_TIMEOUT_S,
                 deadline_s: float = CONNECTION_DEADLINE_S) -> None:
        self.health = health
        self.limits = {"max_connections": max_connections, "max_per_peer": max_per_peer,
                       "deadline_s": deadline_s}
        self.read_timeout_s = read_timeout_s
        self.collectors = list(collectors)
        self.registry = registry
        self._metrics_app = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            healthy, why = self.health()
            start_response("200 OK" if healthy else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{why}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"/metrics or /healthz\n"]

    def _listen(self, family: socket.AddressFamily, host: str, port: int) -> WSGIServer:
        server_class = type("_Server", (_BoundedServer,),
                            {"address_family": family, **self.limits})
        handler_class = type("_Handler", (_Quiet,), {"timeout": self.read_timeout_s})
        server: WSGIServer = server_class((host, port), handler_class)
        server.set_app(self.app)
        return server

    def start(self, bind: str, port: int) -> int:
        """Listen on (bind, port), IPv4 or IPv6 as the address is; a port already taken falls
        back to a free one (logged), so a second process on the host keeps its health check.
        Returns the port. Raises OSError for an address this host cannot listen on
        (socket.gaierror: not an address or a name it resolves)."""
        family, host = resolve_bind(bind)
        try:
            server = self._listen(family, host, port)
        except OSError as exc:
            if port == 0 or exc.errno != errno.EADDRINUSE:
                raise
            log.error("metrics port %s:%d is taken (%s); using a free port instead. Give each "
                      "process its own with PONYBOT_METRICS_PORT.", bind, port, exc.strerror)
            server = self._listen(family, host, 0)
        for collector in self.collectors:
            self.registry.register(collector)
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(target=server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        return self.port

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        for collector in self.collectors:
            self.registry.unregister(collector)


def serve(config: MetricsConfig, process: str, *, redis: Redis,
          collectors: Sequence[Collector] = ()) -> MetricsServer | None:
    """Start `process`'s metrics and health server on the running event loop's behalf (None
    when `[metrics] enabled = false`); the port is written in the log."""
    if not config.enabled:
        log.info("metrics and /healthz are off ([metrics] enabled = false)")
        return None
    health = Health(asyncio.get_running_loop(), redis, loop_timeout_s=config.loop_timeout_s,
                    redis_timeout_s=config.redis_timeout_s)
    server = MetricsServer(health.check, collectors=collectors)
    bind, port = listen_address(config, process)
    try:
        port = server.start(bind, port)
    except socket.gaierror:
        raise ConfigError(f"{bind_setting()}={bind!r}: not an IP address or a name this host "
                          "resolves") from None
    except OSError as exc:
        raise ConfigError(f"{bind_setting()}={bind!r}: cannot listen there on port {port} "
                          f"({exc.strerror or exc})") from None
    host = f"[{bind}]" if ":" in bind else bind
    log.info("%s metrics on http://%s:%d/metrics, health on /healthz", process, host, port)
    return server


def gauge(name: str) -> GaugeMetricFamily:
    """An empty gauge family of `COLLECTED`, for a collector to fill."""
    help_text, labels = COLLECTED[name]
    return GaugeMetricFamily(name, help_text, labels=list(labels))


def families(names: Iterable[str]) -> Iterator[GaugeMetricFamily]:
    """Empty gauge families for `names`: what a collector describes, so registering it does
    not read anything."""
    for name in names:
        yield gauge(name)
