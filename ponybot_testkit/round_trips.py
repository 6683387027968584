"""What one interaction costs in round trips, seen where they happen: every write of commands
to a Redis connection (one command, or a whole pipeline) and every request to Discord's REST
API, in the order they are made, tagged with the asyncio task that made them.

discord.py runs each slash command in a task of its own ("CommandTree-invoker"), so the trips
of one `/pony` are those of one task, whatever else the bot does meanwhile (the positions
loop, another interaction). For tests (a count is deterministic) and bench/ack_path.py.

    with recording() as trips:
        ...
    invoker = trips.by_task("CommandTree-invoker")[0]
    before_answer = invoker.before_answer()    # [("HGETALL", "HGETALL", ...), ("EVALSHA",)]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord.http
import discord.webhook.async_
from redis.asyncio.connection import AbstractConnection

# The interaction callback: the answer to an interaction (discord.py's
# InteractionResponse.send_message, defer, ...).
ANSWER = "POST /interactions/{webhook_id}/{webhook_token}/callback"


def command_names(packed: bytes | str | Iterable[bytes]) -> tuple[str, ...]:
    """The command names in what redis-py writes to a socket (RESP arrays of bulk strings)."""
    if isinstance(packed, str):
        packed = packed.encode()
    data = packed if isinstance(packed, bytes) else b"".join(packed)
    names: list[str] = []
    at = 0
    while at < len(data):
        if data[at:at + 1] != b"*":
            raise ValueError(f"not a RESP array at byte {at}")
        end = data.index(b"\r\n", at)
        count, at = int(data[at + 1:end]), end + 2
        for i in range(count):
            end = data.index(b"\r\n", at)
            length = int(data[at + 1:end])
            value = data[end + 2:end + 2 + length]
            if i == 0:
                names.append(value.decode().upper())
            at = end + 2 + length + 2
    return tuple(names)


@dataclass
class TaskTrips:
    """The round trips of one task, in order: a tuple of Redis command names per write, or
    ("discord", "METHOD /path template") per REST request."""

    name: str
    trips: list[tuple[str, ...]] = field(default_factory=list)

    def redis(self) -> list[tuple[str, ...]]:
        return [t for t in self.trips if t[0] != "discord"]

    def before_answer(self) -> list[tuple[str, ...]]:
        """The Redis round trips made before the interaction was answered."""
        answered = ("discord", ANSWER)
        if answered not in self.trips:
            raise AssertionError(f"task {self.name} never answered: {self.trips}")
        return [t for t in self.trips[:self.trips.index(answered)] if t[0] != "discord"]


@dataclass
class Recording:
    tasks: dict[int, TaskTrips] = field(default_factory=dict)
    # Health checks (a PING on a connection idle for `health_check_interval`) are the
    # connection's upkeep, not the work of whatever command follows: kept out when False.
    health_checks: bool = False

    def add(self, trip: tuple[str, ...]) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "(no task)"
        self.tasks.setdefault(id(task), TaskTrips(name)).trips.append(trip)

    def by_task(self, name: str) -> list[TaskTrips]:
        return [t for t in self.tasks.values() if t.name == name]

    def clear(self) -> None:
        self.tasks.clear()


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Record every Redis write and Discord REST request this process makes until the block
    ends (every Redis client in the process: group by task to tell them apart)."""
    rec = Recording()
    send = AbstractConnection.send_packed_command
    request = discord.http.HTTPClient.request
    webhook_request = discord.webhook.async_.AsyncWebhookAdapter.request

    async def counting_send(self: AbstractConnection, command: Any,
                            check_health: bool = True) -> None:
        names = command_names(command)
        if rec.health_checks or names != ("PING",) or check_health:
            rec.add(names)
        await send(self, command, check_health)

    async def counting_request(self: discord.http.HTTPClient, route: discord.http.Route,
                               **kwargs: Any) -> Any:
        rec.add(("discord", f"{route.method} {route.path}"))
        return await request(self, route, **kwargs)

    async def counting_webhook_request(self: discord.webhook.async_.AsyncWebhookAdapter,
                                       route: discord.http.Route, *args: Any,
                                       **kwargs: Any) -> Any:
        # Interaction callbacks and follow-ups go through the webhook adapter, not HTTPClient.
        rec.add(("discord", f"{route.method} {route.path}"))
        return await webhook_request(self, route, *args, **kwargs)

    adapter = discord.webhook.async_.AsyncWebhookAdapter
    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]
    discord.http.HTTPClient.request = counting_request  # type: ignore[method-assign]
    adapter.request = counting_webhook_request  # type: ignore[method-assign]
    try:
        yield rec
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        discord.http.HTTPClient.request = request  # type: ignore[method-assign]
        adapter.request = webhook_request  # type: ignore[method-assign]
