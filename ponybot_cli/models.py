"""`ponybot models`: every configured model and upscaler as found on disk (present, format,
architecture read from the file or declared, size, converted copy), with the last load time and
load failure the running workers report;
`ponybot models pull ID` fetches one (see `ponybot_cli.pull`)."""

from __future__ import annotations

import argparse
import asyncio

from redis.exceptions import RedisError

from inference.models.inventory import check_all
from inference.safety.files import classifier_problem, unchecked_warning
from ponybot_cli import pull
from ponybot_cli.config_loading import load_or_explain, redis_where
from ponybot_core.config import ConfigError, LoadedConfig
from ponybot_core.heartbeat import WorkerHeartbeat, read_heartbeats
from ponybot_core.keys import Keys
from ponybot_core.redis_client import probe_redis

_FAILURE_CHARS = 60


def add_parser(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    models = commands.add_parser("models", parents=[parent], help="list the configured models",
                                 description=__doc__)
    models.set_defaults(run=run)
    actions = models.add_subparsers(dest="models_command", metavar="pull")
    pull.add_parser(actions, parent)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_explain(args.config)
    if loaded is None:
        return 2
    inventory = check_all(loaded.config, loaded.path.parent)
    beats, note = asyncio.run(live_heartbeats(loaded))
    print(inventory.table(extra={"last load": last_loads(beats),
                                 "load failure": load_failures(beats)}))
    if note:
        print(f"({note})")
    safety = loaded.config.safety
    if safety.path is not None:
        problem = classifier_problem(safety, loaded.path.parent)
        print(f"picture check: {safety.path} — " + (problem or "present"))
    if warning := unchecked_warning(loaded.config):
        print(f"picture check: {warning}")
    return 0


async def live_heartbeats(loaded: LoadedConfig) -> tuple[list[WorkerHeartbeat], str | None]:
    """The running workers' heartbeats, or none and why."""
    try:
        target = redis_where(loaded)
    except ConfigError as exc:
        return [], f"{exc}: no worker reports to show"
    if target is None:
        return [], "no Redis configured and no `ponybot up` running: no worker reports to show"
    redis = probe_redis(target, timeout_s=2)
    try:
        beats = await read_heartbeats(redis, Keys(loaded.config.redis.key_prefix))
    except (RedisError, OSError) as exc:
        return [], f"Redis unreachable ({exc}): no worker reports to show"
    finally:
        await redis.aclose()
    return beats, None if beats else "no worker is running: load times come from their reports"


def last_loads(beats: list[WorkerHeartbeat]) -> dict[str, str]:
    loads: dict[str, str] = {}
    for beat in beats:
        for model_id, seconds in beat.load_s.items():
            loads.setdefault(model_id, f"{seconds:.1f} s ({beat.name})")
    return loads


def load_failures(beats: list[WorkerHeartbeat]) -> dict[str, str]:
    failures: dict[str, str] = {}
    for beat in beats:
        for model_id, why in beat.failed.items():
            text = f"{beat.name}: {why}"
            if len(text) > _FAILURE_CHARS:
                text = text[: _FAILURE_CHARS - 1] + "…"
            failures.setdefault(model_id, text)
    return failures
