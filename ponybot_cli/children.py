"""The children of `ponybot up` (the bot, the workers, the embedded Redis): started so they
cannot outlive it, their output relayed line by line, restarted after a crash with pauses that
double each time, and given up on after too many crashes in a row or at once when a child
reports a problem only the operator can fix (exit status 2, `ponybot_core.processes`).

Children cannot outlive `up` even when it is killed with SIGKILL and has no chance to stop
them: on Linux the kernel sends them SIGTERM when their parent dies."""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from redis.exceptions import RedisError

from ponybot_core.logs import CHILD_OUTPUT
from ponybot_core.processes import EXIT_CONFIG

if TYPE_CHECKING:  # redis_server starts its process with die_with_parent, from here
    from ponybot_cli.redis_server import RedisServer

log = logging.getLogger("ponybot")
relayed = logging.getLogger(CHILD_OUTPUT)
relayed.setLevel(logging.DEBUG)  # each child filters by its own PONYBOT_LOG_LEVEL

_PR_SET_PDEATHSIG = 1
# A child that ran this long has recovered: its crash count starts again.
STABLE_S = 60.0
# How long a finished child's output may take to drain before it is judged without it.
DRAIN_S = 5.0


def die_with_parent() -> None:
    """A `preexec_fn` for `subprocess.Popen`. The kernel ties the signal to the *thread* that
    forked, so only use it for children started from the main thread."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class GiveUp(Exception):
    """`up` stops everything: `line` says why, `status` is its exit status."""

    def __init__(self, line: str, status: int) -> None:
        super().__init__(line)
        self.line = line
        self.status = status


@dataclass(frozen=True)
class RestartPolicy:
    """Crash number n (in a row) waits `base_s * 2**(n-1)`, at most `cap_s`; crash number
    `max_crashes` ends `up`."""

    base_s: float = 1.0
    cap_s: float = 30.0
    max_crashes: int = 5

    def delay(self, crashes: int) -> float:
        return float(min(self.base_s * 2 ** (crashes - 1), self.cap_s))


@dataclass
class CrashCount:
    """Crashes in a row of one child, and what to do about the latest."""

    name: str
    policy: RestartPolicy
    crashes: int = 0

    def crashed(self, ran_s: float, status: str, last_line: str) -> float:
        """The pause before the restart; raises GiveUp at the limit."""
        if ran_s >= STABLE_S:
            self.crashes = 0
        self.crashes += 1
        what = last_line or "(it printed nothing)"
        if self.crashes >= self.policy.max_crashes:
            raise GiveUp(f"{self.name} crashed {self.crashes} times in a row (last: {status}, "
                         f"last line: {what}); giving up — `ponybot check` may say why", 1)
        delay = self.policy.delay(self.crashes)
        log.warning("%s crashed (%s), %d time(s) in a row; restarting in %g s (`up` gives up "
                    "at %d). Its last line: %s", self.name, status, self.crashes, delay,
                    self.policy.max_crashes, what)
        return delay


def describe_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class Child:
    """One bot or worker process of `up`, restarted when it crashes (`check`)."""

    name: str
    args: list[str]
    env: dict[str, str]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    keep_fds: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0
    started_at: float = 0.0
    last_line: str = ""
    _relay: threading.Thread | None = None
    _count: CrashCount | None = None

    def start(self) -> None:
        log.info("starting %s", self.name)
        self.last_line = ""
        self.process = subprocess.Popen(self.args, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        process_group=0, preexec_fn=die_with_parent,
                                        pass_fds=self.keep_fds)
        assert self.process.stdout is not None
        self._relay = threading.Thread(target=self._relay_output, args=(self.process.stdout,),
                                       name=f"output of {self.name}", daemon=True)
        self._relay.start()
        self.started_at = time.monotonic()

    def _relay_output(self, stream: IO[bytes]) -> None:
        """Every line to `up`'s handlers (stderr, the log file), as the child wrote it."""
        with stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                if line.strip():
                    self.last_line = line
                relayed.info("%s", line)

    def drain(self) -> None:
        """Wait (a little) for the output of a child that has exited."""
        if self._relay is not None:
            self._relay.join(DRAIN_S)

    def check(self) -> None:
        """Start the child when its restart is due; after it exited, decide: restart later
        (a crash), or GiveUp (exit status 2, or too many crashes in a row)."""
        now = time.monotonic()
        if self.process is None:
            if now >= self.restart_at:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        self.drain()
        self.process = None
        what = self.last_line or "(it printed nothing)"
        if code == EXIT_CONFIG:
            raise GiveUp(f"{self.name} stopped on a problem only you can fix (exit status 2): "
                         f"{what} — not restarting it; fix that and start `ponybot up` again",
                         EXIT_CONFIG)
        if self._count is None:
            self._count = CrashCount(self.name, self.policy)
        delay = self._count.crashed(now - self.started_at, describe_status(code), what)
        self.restart_at = now + delay

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)


@dataclass
class EmbeddedRedis:
    """The embedded redis-server, restarted at once when it dies (the AOF keeps the queue;
    the children reconnect), given up on like a child that keeps crashing."""

    server: RedisServer
    policy: RestartPolicy
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None
    _count: CrashCount | None = None

    def check(self) -> None:
        now = time.monotonic()
        if self.restart_at is None:
            process = self.server.process
            if process is None or process.poll() is None:
                return
            self._crashed(now, describe_status(process.returncode))
        assert self.restart_at is not None
        if now < self.restart_at:
            return
        log.warning("restarting the embedded Redis (the AOF keeps the queue)")
        try:
            self.server.start()
        except (RuntimeError, TimeoutError, OSError, RedisError) as exc:
            self._crashed(now, f"did not start: {last_line(str(exc))}")
            return
        self.started_at = now
        self.restart_at = None

    def _crashed(self, now: float, status: str) -> None:
        if self._count is None:
            self._count = CrashCount("the embedded Redis", self.policy)
        delay = self._count.crashed(now - self.started_at, status,
                                    last_line(self.server.log_tail()))
        self.restart_at = now + delay


def last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
