"""`ponybot up`: the whole bot on one machine — Redis (embedded unless REDIS_URL is set), the
bot process and the worker(s) — restarting any child that dies, until Ctrl-C or SIGTERM.

Before anything starts it prints which models are usable and what to do about the others, so a
missing checkpoint is found here and not by the first user. Signals are passed on: SIGINT or
SIGTERM goes to the bot and every worker (each finishes what it is doing), then Redis stops
last, so workers can still acknowledge on their way out; a second signal kills at once. The
children run in their own process group (a terminal's Ctrl-C reaches only `up`, which stops
them in that order) and die with `up` even if it is killed outright.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from inference.inventory import check_all
from ponybot_cli.children import die_with_parent
from ponybot_cli.redis_server import RedisServer
from ponybot_cli.settings import load_or_explain
from ponybot_core.config import Settings
from ponybot_core.logs import masked_url

log = logging.getLogger("ponybot")

# A child that keeps dying is restarted with growing pauses, up to this.
MAX_BACKOFF_S = 30.0
# How long children get to finish their work after the first signal.
STOP_GRACE_S = 30.0


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    backoff_s: float = 1.0
    restart_at: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        log.info("starting %s", self.name)
        self.process = subprocess.Popen(self.args, env=self.env, stdin=subprocess.DEVNULL,
                                        process_group=0, preexec_fn=die_with_parent)
        self.started_at = time.monotonic()

    def check(self) -> None:
        """Restart the child if it exited; reset the backoff once it has run a while."""
        now = time.monotonic()
        if self.process is None:
            if now >= self.restart_at:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            if now - self.started_at > 60:
                self.backoff_s = 1.0
            return
        log.warning("%s exited with %s; restarting in %.0f s", self.name, code, self.backoff_s)
        self.process = None
        self.restart_at = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)


def add_parser(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    up = commands.add_parser("up", parents=[parent], help="run Redis, the bot and the worker(s)",
                             description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--workers", type=int, default=1, help="worker processes (one per GPU)")
    up.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_explain(args.config)
    if settings is None:
        return 2
    if settings.secrets.discord_token is None:
        print("DISCORD_TOKEN is not set: export the bot token from the Discord developer portal "
              "(`ponybot check` tests it).", file=sys.stderr)
        return 2
    received: list[int] = []
    # Set first: a signal while Redis starts must not leave it behind.
    signal.signal(signal.SIGINT, lambda sig, _: received.append(sig))
    signal.signal(signal.SIGTERM, lambda sig, _: received.append(sig))
    log.info("config %s", settings.path)
    announce_models(settings)
    env = dict(os.environ, PONYBOT_CONFIG=str(settings.path))
    redis_server: RedisServer | None = None
    children: list[Child] = []
    try:
        if settings.redis_url:
            log.info("Redis %s (from %s)", masked_url(settings.redis_url),
                     "REDIS_URL" if settings.secrets.redis_url else "redis.url")
        else:
            redis_server = RedisServer(settings.resolve(settings.config.redis.data_dir),
                                       supervised=True)
            redis_server.start()
            env["REDIS_URL"] = redis_server.url
            log.info("Redis %s (embedded, data in %s)", redis_server.url, redis_server.data_dir)
        children = [Child("bot", [sys.executable, "-m", "bot"], env)]
        for i in range(args.workers):
            worker_env = dict(env)
            if args.workers > 1:
                worker_env.setdefault("CUDA_VISIBLE_DEVICES", str(i))
            children.append(Child(f"worker-{i}", [sys.executable, "-m", "inference"], worker_env))
        while not received:
            for child in children:
                child.check()
            if redis_server is not None and redis_server.process is not None \
                    and redis_server.process.poll() is not None:
                log.warning("embedded Redis exited; restarting it (AOF keeps the queue)")
                redis_server.start()
            time.sleep(0.2)
    finally:
        stop(children, received)
        if redis_server is not None:
            redis_server.stop()
        log.info("stopped")
    return 0


def announce_models(settings: Settings) -> None:
    """The inventory table, and in one line which models `/pony` can draw with."""
    inventory = check_all(settings.config, settings.path.parent)
    log.info("models and upscalers:\n%s", inventory.table())
    usable = inventory.usable_models()
    if usable:
        log.info("models available: %s", ", ".join(usable))
    else:
        log.warning("no model is available: /pony refuses every request until one is "
                    "(see the table above for what to do)")


def stop(children: list[Child], received: list[int]) -> None:
    """Pass the signal on, wait for every child, kill what is left after the grace period or
    at a second signal."""
    first = received[0] if received else signal.SIGTERM
    log.info("stopping (%s)", signal.Signals(first).name)
    for child in children:
        child.send(first)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(c.running for c in children):
        if len(received) > 1 or time.monotonic() > deadline:
            for child in children:
                if child.running:
                    log.warning("killing %s", child.name)
                    child.send(signal.SIGKILL)
        time.sleep(0.05)
    for child in children:
        if child.process is not None:
            child.process.wait()
