"""How the bot and the worker processes run their main coroutine and end: a config problem
is one line on stderr and exit status 2 (what `ponybot up` and service managers read); Ctrl-C
is a clean exit."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from ponybot_core.config import ConfigError


def run_process(main: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(main)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
