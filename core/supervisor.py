"""`ponybot up`: the whole bot on one machine — Redis (embedded unless REDIS_URL is set), the
bot process and the worker(s) — restarting any child that dies, until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from core.config import ConfigError, config_path, load_settings
from core.logs import setup_logging
from core.redis_server import RedisServer

log = logging.getLogger("ponybot")

# A child that keeps dying is restarted with growing pauses, up to this.
MAX_BACKOFF_S = 30.0


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
        self.process = subprocess.Popen(self.args, env=self.env)
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

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ponybot", description=__doc__)
    parser.add_argument("command", choices=["up"], help="up: run Redis, the bot and a worker")
    parser.add_argument("--config", help="config file (default: $PONYBOT_CONFIG or ./config.toml)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one per GPU)")
    args = parser.parse_args(argv)
    setup_logging("ponybot")
    path = config_path(args.config).resolve()
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if settings.secrets.discord_token is None:
        print("DISCORD_TOKEN is not set: export the bot token from the Discord developer portal.",
              file=sys.stderr)
        return 2

    env = dict(os.environ, PONYBOT_CONFIG=str(path))
    redis_server: RedisServer | None = None
    if not settings.redis_url:
        redis_server = RedisServer(settings.resolve(settings.config.redis.data_dir))
        redis_server.start()
        env["REDIS_URL"] = redis_server.url
        log.info("embedded Redis on %s (data in %s)", redis_server.url, redis_server.data_dir)

    children = [Child("bot", [sys.executable, "-m", "bot"], env)]
    for i in range(args.workers):
        worker_env = dict(env)
        if args.workers > 1:
            worker_env.setdefault("CUDA_VISIBLE_DEVICES", str(i))
        children.append(Child(f"worker-{i}", [sys.executable, "-m", "inference"], worker_env))

    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stopping:
            for child in children:
                child.check()
            if redis_server is not None and redis_server.process is not None \
                    and redis_server.process.poll() is not None:
                log.warning("embedded Redis exited; restarting it (AOF keeps the queue)")
                redis_server.start()
            time.sleep(0.5)
    finally:
        log.info("stopping")
        for child in children:
            child.stop()
        if redis_server is not None:
            redis_server.stop()
    return 0




if __name__ == "__main__":
    sys.exit(main())
