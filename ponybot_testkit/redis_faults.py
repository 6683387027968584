"""Faults of a real Redis: connection errors injected into a client, before a call is sent or
after Redis ran it (the reply lost on the way back), and a server restarted."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from ponybot_cli.redis_server import RedisServer


@dataclass
class Faults:
    """`armed` fails the next call once ("before" or "after"); `rate` fails that share of all
    calls (half before, half after), drawn from a seeded generator."""

    armed: str | None = None
    rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(9))
    injected: int = 0

    def wrap(self, client: Redis) -> Redis:
        original = client.execute_command

        async def execute_command(*args: Any, **kwargs: Any) -> Any:
            mode, self.armed = self.armed, None
            if mode is None and self.rate and self.rng.random() < self.rate:
                mode = self.rng.choice(["before", "after"])
            if mode == "before":
                self.injected += 1
                raise ConnectionError("injected before the call")
            result = await original(*args, **kwargs)
            if mode == "after":
                self.injected += 1
                raise ConnectionError("injected after the call ran")
            return result

        client.execute_command = execute_command  # type: ignore[method-assign]  # the fault
        return client


def restart(server: RedisServer) -> None:
    """Stop (SIGTERM: the AOF is complete) and start again on the same port and data."""
    server.stop()
    server.start()
