"""The config every `ponybot` command starts from, or one message saying what is wrong."""

from __future__ import annotations

import sys

from ponybot_cli.redis_server import running_url
from ponybot_core.config import ConfigError, LoadedConfig, config_path, load_config_and_secrets
from ponybot_core.logs import setup_logging
from ponybot_core.redis_client import RedisTarget, redis_target


def load_or_explain(cli_value: str | None) -> LoadedConfig | None:
    """The config (with the secrets) from `--config`, `$PONYBOT_CONFIG` or ./config.toml;
    None (after printing why, naming the file and key) when it is unusable."""
    setup_logging("ponybot")
    try:
        return load_config_and_secrets(config_path(cli_value).resolve())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def redis_where(loaded: LoadedConfig) -> RedisTarget | None:
    """The configured Redis ([redis.sentinel]'s sentinels, REDIS_URL or redis.url), else the
    embedded one of a running `ponybot up`; None when there is neither. Raises ConfigError
    when both Sentinel and a URL are configured."""
    return redis_target(loaded) or running_url(loaded.resolve(loaded.config.redis.data_dir))
