"""The queue's Lua scripts, read from `lua/*.lua` and registered once per Redis client.

Each script is one atomic step of a job's life; each file's header says its KEYS and ARGV.
redis-py runs them with EVALSHA and reloads them by itself after a Redis restart (NOSCRIPT).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_LUA = Path(__file__).parent / "lua"


@cache
def source(name: str) -> str:
    return (_LUA / f"{name}.lua").read_text()


class Scripts:
    def __init__(self, redis: Redis) -> None:
        def load(name: str) -> AsyncScript:
            return redis.register_script(source(name))

        self.enqueue = load("enqueue")
        self.take = load("take")
        self.reclaim = load("reclaim")
        self.renew = load("renew")
        self.transition = load("transition")
        self.cancel = load("cancel")
        self.pause = load("pause")
        self.resume = load("resume")
        self.set_fields = load("set_fields")
        self.edit = load("edit")
