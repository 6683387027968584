"""`python -m inference [--config PATH] [run]` runs a worker;
`python -m inference convert <model-id> [--to diffusers] [--trust-pickle]` converts a .ckpt once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from ponybot_core.config import ConfigError, config_path, load_config_and_secrets
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.logs import setup_logging
from ponybot_core.processes import run_process
from ponybot_core.redis_client import describe, redis_target, worker_redis

log = logging.getLogger("inference")


# What only the worker extra brings (pyproject.toml): missing on the light bot install.
_WORKER_ONLY = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "spandrel",
                "safetensors", "numpy", "timm"}


async def run_worker(path: Path) -> int:
    try:
        from inference.loop import metrics as worker_metrics
        from inference.worker import Worker, logged_in_client
    except ModuleNotFoundError as exc:
        if exc.name not in _WORKER_ONLY:
            raise
        # Exit 2: `ponybot up` stops with this line instead of restarting a worker forever.
        raise ConfigError(f"worker: {exc.name} is not installed (the light bot install): pip "
                          "install 'ponybot[worker]' where workers run, or `ponybot up "
                          "--workers 0` here") from exc

    loaded = load_config_and_secrets(path)
    token, _ = loaded.connection("worker")
    target = redis_target(loaded)
    assert target is not None  # connection() refused a config without one
    log.info("config %s, Redis %s", loaded.path, describe(target))
    use_endpoints(loaded.config.discord)
    redis = worker_redis(target, block_s=loaded.config.worker.block_ms / 1000)
    client = await logged_in_client(token)
    worker = Worker(loaded, redis, client)
    worker_metrics.serve(loaded.config.metrics, redis, worker.placement.device)  # until exit
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Finish the job in hand, then stop; a second signal kills (the job is reclaimed).
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await client.close()
        await redis.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    parser.add_argument("--config", help="config file (default: $PONYBOT_CONFIG or ./config.toml)")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "convert"])
    args, rest = parser.parse_known_args(argv)
    setup_logging("worker")
    if args.command == "convert":
        from inference.models import convert

        try:
            loaded = load_config_and_secrets(config_path(args.config))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        return convert.main(rest, loaded.config, loaded.path.parent)
    if rest:
        parser.error(f"unexpected arguments: {' '.join(rest)}")
    return run_process(run_worker(config_path(args.config)), "worker")


if __name__ == "__main__":
    sys.exit(main())
