"""How the bot and the worker processes run their main coroutine and end.

The exit status is the contract with `ponybot up` and service managers:
  0  stopped on purpose (Ctrl-C, SIGTERM)
  2  a problem only the operator can fix — invalid config, a token Discord refuses, an intent
     the developer portal does not grant — printed as one line on stderr. Restarting cannot
     help: `ponybot up` stops instead (systemd: `RestartPreventExitStatus=2`).
  anything else  a crash: worth a restart.

`PONYBOT_START_FAULT` (tests only, off unless set) makes a process fail at start: `bot`
crashes the bot process (exit 1), `bot=config` makes it report a config problem (exit 2);
several entries are separated by commas (`bot,worker`)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any

import discord

from ponybot_core.config import ConfigError

EXIT_CONFIG = 2
# Gateway close codes that no reconnect or restart fixes (Discord's docs: "do not reconnect").
_FATAL_CLOSE_CODES = {
    4004: "Discord refused the token (gateway: authentication failed)",
    4010: "Discord refused the shard this process asked for (invalid shard): check "
          "[discord] shard_count / shard_ids and PONYBOT_SHARD_COUNT / PONYBOT_SHARD_IDS",
    4011: "Discord requires sharding: this bot is in too many servers for one shard (2,500 "
          "at most); set a larger [discord] shard_count or PONYBOT_SHARD_COUNT, or leave it "
          "unset so Discord's recommendation is used",
    4013: "Discord refused the gateway intents the bot asked for (invalid intents)",
    4014: "Discord refused a privileged intent: enable it for this application in the "
          "developer portal (Bot → Privileged Gateway Intents)",
}


class InjectedStartFault(RuntimeError):
    """A crash at start asked for by PONYBOT_START_FAULT."""


def run_process(main: Coroutine[Any, Any, int], process: str) -> int:
    try:
        _start_fault(process)
        return asyncio.run(main)
    except ConfigError as exc:
        return _config_problem(str(exc))
    except discord.LoginFailure:
        return _config_problem(f"{process}: Discord refused the token (401): reset it in the "
                               "developer portal (Bot → Reset Token) and export the new one "
                               "as DISCORD_TOKEN")
    except discord.PrivilegedIntentsRequired:
        return _config_problem(f"{process}: {_FATAL_CLOSE_CODES[4014]}")
    except discord.ConnectionClosed as exc:
        if exc.code not in _FATAL_CLOSE_CODES:
            raise
        return _config_problem(f"{process}: {_FATAL_CLOSE_CODES[exc.code]}")
    except KeyboardInterrupt:
        return 0
    finally:
        main.close()  # never awaited when the start fault fired; a no-op otherwise


def _config_problem(line: str) -> int:
    print(line, file=sys.stderr)
    return EXIT_CONFIG


def _start_fault(process: str) -> None:
    for entry in filter(None, os.environ.get("PONYBOT_START_FAULT", "").split(",")):
        name, _, kind = entry.strip().partition("=")
        if name != process:
            continue
        if kind == "config":
            raise ConfigError(f"{process}: configuration problem injected by "
                              "PONYBOT_START_FAULT")
        raise InjectedStartFault(f"{process}: crash injected by PONYBOT_START_FAULT")
