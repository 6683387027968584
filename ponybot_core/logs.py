"""One logging setup for every process, with the job id in every line about a job.

`PONYBOT_LOG_LEVEL` (DEBUG, INFO — the default —, WARNING, ERROR) sets the level of every
process; discord.py stays at INFO or above even at DEBUG (it logs every gateway event).
`ponybot up` relays its children's lines as they are (they carry their own time and process
name), to its stderr and, with `--log-file`, to a rotating file.
"""

from __future__ import annotations

import importlib.util
import logging
import logging.handlers
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The logger `ponybot up` relays its children's output through: those lines are already
# formatted by the child, so they are written unchanged.
CHILD_OUTPUT = "ponybot.children"
LOG_FILE_MAX_BYTES = 10 * 1024**2
LOG_FILE_BACKUPS = 5


class _Lines(logging.Formatter):
    """Our format, except for a child's lines, which already carry theirs."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == CHILD_OUTPUT:
            return record.getMessage()
        return super().format(record)


class _DropVoiceWarnings(logging.Filter):
    """discord.py warns at every client start that PyNaCl (and davey) are missing, "voice will
    NOT be supported": this bot never joins a voice channel."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).endswith("voice will NOT be supported")


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup_logging(process: str) -> None:
    wanted = os.environ.get("PONYBOT_LOG_LEVEL", "INFO").upper()
    level = wanted if wanted in LEVELS else "INFO"
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_Lines(f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    if wanted != level:
        # Not worth a refusal (or a traceback in every process): say so once and go on.
        logging.getLogger("ponybot").warning("PONYBOT_LOG_LEVEL=%s is not one of %s; using INFO",
                                             wanted, ", ".join(LEVELS))
    # discord.py logs every gateway event at DEBUG and a lot at INFO; keep ours readable.
    logging.getLogger("discord").setLevel(max(logging.getLevelName(level), logging.INFO))
    client_log = logging.getLogger("discord.client")
    if not any(isinstance(f, _DropVoiceWarnings) for f in client_log.filters):
        client_log.addFilter(_DropVoiceWarnings())
    _one_handler_for_the_hub()


def _one_handler_for_the_hub() -> None:
    """huggingface_hub gives its logger a stderr handler of its own when imported, and still
    lets the records propagate to ours: every hub line was printed twice (once bare). Its
    logging module is light (no torch, no HTTP client), so import it now and drop that
    handler; the hub's lines then come once, in our format."""
    if importlib.util.find_spec("huggingface_hub") is None:  # the light bot install
        return
    from huggingface_hub.utils import logging as hub_logging

    hub = hub_logging.get_logger()
    for handler in list(hub.handlers):
        if type(handler) is logging.StreamHandler:
            hub.removeHandler(handler)


def log_to_file(path: Path, *, max_bytes: int = LOG_FILE_MAX_BYTES,
                backups: int = LOG_FILE_BACKUPS) -> logging.Handler:
    """Also write every line (ours and relayed ones) to `path`, rotated at `max_bytes` with
    `backups` old files kept (`path.1` the newest). One process writes the file: rotation
    from several processes at once would lose lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                   backupCount=backups, encoding="utf-8")
    root = logging.getLogger()
    formatter = next((h.formatter for h in root.handlers if h.formatter), None)
    handler.setFormatter(formatter or _Lines())
    root.addHandler(handler)
    return handler


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
