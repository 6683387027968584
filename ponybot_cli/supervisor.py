"""`ponybot up`: the whole bot on one machine — Redis (embedded unless REDIS_URL is set), the
bot process and the worker(s) — until Ctrl-C or SIGTERM.

Before anything starts it checks what it could fix nothing without, and stops at once with
one line per problem (exit status 2): the config, DISCORD_TOKEN set and accepted by Discord,
the data folder (redis.data_dir) writable, no other `up` using that folder (an flock held for
the life of `up`, so two never share one AOF or one token), and a configured REDIS_URL
reachable. Discord or REDIS_URL out of reach may pass by itself: that is exit status 1, which
a service manager retries. Then it prints which models are usable and what to do about the
others, so a missing checkpoint is found here and not by the first user.

The embedded Redis gets a password (in the data folder, mode 0600) that reaches the children
in their environment only, never a command line or a log line. A child that crashes is
restarted after a pause that doubles with each crash in a row (--restart-delay, up to 30 s);
after --max-crashes in a row `up` gives up with a summary (exit status 1). A child that exits
with status 2 (a refused token, a bad config) is not restarted: `up` stops with its line.

Signals are passed on: SIGINT or SIGTERM goes to the bot and every worker (each finishes what
it is doing), then Redis stops last, so workers can still acknowledge on their way out; a
second signal kills at once. The children run in their own process group (a terminal's Ctrl-C
reaches only `up`, which stops them in that order) and die with `up` even if it is killed
outright. Their lines are relayed through `up`: to stderr and, with --log-file, to one
rotating file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import RedisError

from inference.models.inventory import check_all
from ponybot_cli import doctor
from ponybot_cli.children import (
    Child,
    EmbeddedRedis,
    GiveUp,
    RestartPolicy,
    last_line,
)
from ponybot_cli.config_loading import load_or_explain
from ponybot_cli.redis_server import DataFolderLock, FolderInUse, RedisServer
from ponybot_core.config import LoadedConfig
from ponybot_core.logs import (
    LOG_FILE_BACKUPS,
    LOG_FILE_MAX_BYTES,
    log_to_file,
    masked_url,
    setup_logging,
)
from ponybot_core.metrics import worker_port_environment
from ponybot_core.processes import EXIT_CONFIG

log = logging.getLogger("ponybot")

# How long children get to finish their work after the first signal.
STOP_GRACE_S = 30.0
# Exit statuses of `up` besides 0 and EXIT_CONFIG (2): worth retrying later.
EXIT_GAVE_UP = 1
EXIT_UNAVAILABLE = 1


def add_parser(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    up = commands.add_parser("up", parents=[parent], help="run Redis, the bot and the worker(s)",
                             description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--workers", type=_at_least(0), default=1,
                    help="worker processes (one per GPU; 0 for a bot-only machine)")
    up.add_argument("--log-file", type=Path,
                    help="also write every line (up's and its children's) to this file, "
                         "rotated by size")
    up.add_argument("--log-file-mb", type=float, default=LOG_FILE_MAX_BYTES / 1024**2,
                    help="rotate the log file at this size (default %(default)g MB)")
    up.add_argument("--log-file-backups", type=_at_least(0), default=LOG_FILE_BACKUPS,
                    help="rotated log files kept (default %(default)s)")
    up.add_argument("--restart-delay", type=float, default=RestartPolicy.base_s,
                    metavar="SECONDS",
                    help="pause before restarting a crashed child; doubles with each crash in "
                         f"a row, up to {RestartPolicy.cap_s:g} s (default %(default)g)")
    up.add_argument("--max-crashes", type=_at_least(1), default=RestartPolicy.max_crashes,
                    help="crashes in a row of one child (a minute of running starts the count "
                         "again) after which up gives up (default %(default)s)")
    up.set_defaults(run=run)


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    setup_logging("ponybot")
    if args.log_file:
        try:
            log_to_file(args.log_file.resolve(), max_bytes=int(args.log_file_mb * 1024**2),
                        backups=args.log_file_backups)
        except OSError as exc:
            log.error("cannot start: --log-file %s: %s", args.log_file, exc.strerror)
            return EXIT_CONFIG
    loaded = load_or_explain(args.config)
    if loaded is None:
        return EXIT_CONFIG
    if loaded.secrets.discord_token is None:
        log.error("cannot start: DISCORD_TOKEN is not set: export the bot token from the "
                  "Discord developer portal (`ponybot check` tests it)")
        return EXIT_CONFIG
    data = doctor.check_data_folder(loaded, create=True)
    if data.status == "fail":
        return refuse([data])
    lock = DataFolderLock(loaded.resolve(loaded.config.redis.data_dir))
    try:
        lock.acquire()
    except FolderInUse as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    try:
        try:
            findings = asyncio.run(checks_before_start(loaded))
        except KeyboardInterrupt:
            return 0
        if any(f.status == "fail" for f in findings):
            return refuse(findings)
        for finding in findings:
            if finding.status == "warn":
                log.warning("%s: %s%s", finding.topic, finding.detail,
                            f" → {finding.fix}" if finding.fix else "")
        policy = RestartPolicy(base_s=args.restart_delay, max_crashes=args.max_crashes)
        return supervise(loaded, lock, workers=args.workers, policy=policy)
    finally:
        lock.release()


async def checks_before_start(loaded: LoadedConfig) -> list[doctor.Finding]:
    """The doctor's checks `up` needs, without discord.py's "logging in" line: if they pass,
    the bot logs in and says so; if not, the one line is ours."""
    discord_log = logging.getLogger("discord")
    level = discord_log.level
    discord_log.setLevel(logging.WARNING)
    try:
        return await doctor.before_up(loaded)
    finally:
        discord_log.setLevel(level)


def refuse(findings: list[doctor.Finding]) -> int:
    """One line for each failed check, with its fix; the exit status of a refusal: 2, or 1
    when every failure may pass by itself (Discord or REDIS_URL unreachable)."""
    failed = [f for f in findings if f.status == "fail"]
    for finding in failed:
        log.error("cannot start: %s: %s%s", finding.topic, finding.detail,
                  f" → {finding.fix}" if finding.fix else "")
    return EXIT_UNAVAILABLE if all(f.transient for f in failed) else EXIT_CONFIG


def supervise(loaded: LoadedConfig, lock: DataFolderLock, *, workers: int,
              policy: RestartPolicy) -> int:
    """Redis, then the children; keep them running until a signal (0) or GiveUp (its
    status)."""
    received: list[int] = []
    # Set first: a signal while Redis starts must not leave it behind.
    signal.signal(signal.SIGINT, lambda sig, _: received.append(sig))
    signal.signal(signal.SIGTERM, lambda sig, _: received.append(sig))
    log.info("config %s", loaded.path)
    announce_models(loaded)
    # The children hold the lock too: the folder is in use until the last of them is gone.
    keep_fds = (lock.fd,)
    # Unbuffered: a child's lines reach the relay as they are written, in order.
    env = dict(os.environ, PONYBOT_CONFIG=str(loaded.path), PYTHONUNBUFFERED="1")
    redis: EmbeddedRedis | None = None
    children: list[Child] = []
    try:
        if loaded.config.redis.sentinel is not None:  # the children ask the sentinels
            log.info("Redis via the sentinels %s",
                     ", ".join(loaded.config.redis.sentinel.addresses))
        elif loaded.redis_url:
            log.info("Redis %s (from %s)", masked_url(loaded.redis_url),
                     "REDIS_URL" if loaded.secrets.redis_url else "redis.url")
        else:
            server = RedisServer(lock.data_dir, supervised=True, secured=True,
                                 keep_fds=keep_fds)
            try:
                server.start()
            except (RuntimeError, TimeoutError, OSError, RedisError) as exc:
                log.error("the embedded Redis did not start: %s (its log: %s)",
                          last_line(str(exc)), server.data_dir / "redis.log")
                return EXIT_GAVE_UP
            redis = EmbeddedRedis(server, policy)
            # The password reaches the children in their environment only (readable by this
            # user alone, unlike a command line).
            env["REDIS_URL"] = server.url
            log.info("Redis %s (embedded, data in %s)", masked_url(server.url), server.data_dir)
        children = [Child("bot", [sys.executable, "-m", "bot"], env, policy, keep_fds)]
        for i in range(workers):
            worker_env = dict(env)
            if workers > 1:
                worker_env.setdefault("CUDA_VISIBLE_DEVICES", str(i))
            worker_env.update(worker_port_environment(loaded.config.metrics, i))  # 9751, 9752..
            children.append(Child(f"worker-{i}", [sys.executable, "-m", "inference"],
                                  worker_env, policy, keep_fds))
        while not received:
            for child in children:
                child.check()
            if redis is not None:
                redis.check()
            time.sleep(0.2)
        return 0
    except GiveUp as exc:
        log.error("%s", exc.line)
        return exc.status
    finally:
        stop(children, received)
        if redis is not None:
            redis.server.stop()
        log.info("stopped")


def announce_models(loaded: LoadedConfig) -> None:
    """The inventory table, and in one line which models `/pony` can draw with."""
    inventory = check_all(loaded.config, loaded.path.parent)
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
        child.drain()
