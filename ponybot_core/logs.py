"""One logging setup for every process, with the job id in every line about a job."""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def setup_logging(process: str) -> None:
    level = os.environ.get("PONYBOT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s",
    )
    # discord.py logs every gateway event at DEBUG and a lot at INFO; keep ours readable.
    logging.getLogger("discord").setLevel(max(logging.getLevelName(level), logging.INFO))


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """`JobLog(log, job_id)`: prefixes every message with `job=<id>` so one job can be followed
    across the bot and the workers with a grep."""

    def __init__(self, logger: logging.Logger, job_id: str) -> None:
        super().__init__(logger, {"job_id": job_id})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"job={self.extra['job_id'] if self.extra else '?'} {msg}", kwargs


def masked_url(url: str) -> str:
    """`url` fit for a log line: a password in it becomes `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literals keep their brackets
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
