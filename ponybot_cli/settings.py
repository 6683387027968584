"""The config every `ponybot` command starts from, or one message saying what is wrong."""

from __future__ import annotations

import sys

from ponybot_cli.redis_server import running_url
from ponybot_core.config import ConfigError, Settings, config_path, load_settings
from ponybot_core.logs import setup_logging


def load_or_explain(cli_value: str | None) -> Settings | None:
    """The settings from `--config`, `$PONYBOT_CONFIG` or ./config.toml; None (after printing
    why, naming the file and key) when they are unusable."""
    setup_logging("ponybot")
    try:
        return load_settings(config_path(cli_value).resolve())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def redis_url(settings: Settings) -> str | None:
    """The configured Redis (REDIS_URL, else redis.url), else the embedded one of a running
    `ponybot up`; None when there is neither."""
    return settings.redis_url or running_url(settings.resolve(settings.config.redis.data_dir))
