"""`python -m bot [--config PATH]`: run the Discord bot process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot.app import PonyBot
from ponybot_core.config import ConfigError, config_path, load_settings
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.logs import setup_logging
from ponybot_core.redis_client import bot_redis

log = logging.getLogger("bot")


async def run(settings_path: str | None) -> int:
    settings = load_settings(config_path(settings_path))
    token = settings.secrets.discord_token
    if token is None:
        log.error("DISCORD_TOKEN is not set")
        return 2
    if not settings.redis_url:
        log.error("no Redis: set REDIS_URL or redis.url (or start everything with `ponybot up`)")
        return 2
    use_endpoints(settings.config.discord)
    bot = PonyBot(settings, bot_redis(settings.redis_url))
    async with bot:
        await bot.start(token.get_secret_value())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument("--config", help="config file (default: $PONYBOT_CONFIG or ./config.toml)")
    args = parser.parse_args(argv)
    setup_logging("bot")
    try:
        return asyncio.run(run(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
