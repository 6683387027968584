"""`python -m bot [--config PATH]`: run the Discord bot process."""

from __future__ import annotations

import argparse
import logging
import sys

from bot import metrics
from bot.app import PonyBot
from ponybot_core.config import config_path, load_config_and_secrets, with_shard_environment
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.logs import setup_logging
from ponybot_core.processes import run_process
from ponybot_core.redis_client import bot_redis, describe, redis_target

log = logging.getLogger("bot")


async def run(config_arg: str | None) -> int:
    loaded = load_config_and_secrets(config_path(config_arg))
    # This host's shard range, when the environment names one (one file for every bot host).
    loaded = loaded.model_copy(update={"config": with_shard_environment(loaded.config)})
    token, _ = loaded.connection("bot")
    target = redis_target(loaded)
    assert target is not None  # connection() refused a config without one
    log.info("config %s, Redis %s", loaded.path, describe(target))
    use_endpoints(loaded.config.discord)
    bot = PonyBot(loaded, bot_redis(target))
    metrics.serve(loaded.config.metrics, bot.queue_reads, bot.redis)  # until the process ends
    async with bot:
        await bot.start(token)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument("--config", help="config file (default: $PONYBOT_CONFIG or ./config.toml)")
    args = parser.parse_args(argv)
    setup_logging("bot")
    return run_process(run(args.config), "bot")


if __name__ == "__main__":
    sys.exit(main())
