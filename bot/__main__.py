"""`python -m bot [--config PATH]`: run the Discord bot process."""

from __future__ import annotations

import argparse
import logging
import sys

from bot.app import PonyBot
from ponybot_core.config import config_path, load_config_and_secrets
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.logs import masked_url, setup_logging
from ponybot_core.processes import run_process
from ponybot_core.redis_client import bot_redis

log = logging.getLogger("bot")


async def run(config_arg: str | None) -> int:
    loaded = load_config_and_secrets(config_path(config_arg))
    token, redis_url = loaded.connection("bot")
    log.info("config %s, Redis %s", loaded.path, masked_url(redis_url))
    use_endpoints(loaded.config.discord)
    bot = PonyBot(loaded, bot_redis(redis_url))
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
