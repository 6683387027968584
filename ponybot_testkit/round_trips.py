"""What one interaction costs in round trips, seen where they happen: every write of commands
to a Redis connection (one command, or a whole pipeline) and every request to Discord's REST
API, in the order they are made, tagged with the asyncio task that made them.

discord.py runs each slash command in a task of its own ("CommandTree-invoker"), so the trips
of one `/pony` are those of one task, whatever else the bot does meanwhile (the positions
loop, another interaction). A connection's upkeep — the handshake of a new pooled connection,
the PING of a health check on one left idle — is the pool's business, not the command's: it
is recorded apart. For tests (a count is deterministic) and bench/ack_path.py.

    with recording() as trips:
        ...  # one /pony
    [one] = trips.answered()
    await one.finished()
    one.before_answer()    # [("HGETALL", "HGETALL", "HGETALL", "ZRANGE", "MGET"), ("EVALSHA",)]
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord.http
import discord.webhook.async_
from redis.asyncio.connection import AbstractConnection

# The interaction callback: the answer to an interaction (InteractionResponse.send_message,
# defer, ...), as discord.py's route names it.
ANSWER = ("discord", "POST /interactions/{webhook_id}/{webhook_token}/callback")
DISCORD, REDIS, UPKEEP = "discord", "redis", "redis upkeep"

_connecting: contextvars.ContextVar[bool] = contextvars.ContextVar("connecting", default=False)


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
            if i == 0:
                names.append(data[end + 2:end + 2 + length].decode().upper())
            at = end + 2 + length + 2
    return tuple(names)


@dataclass
class TaskTrips:
    """The round trips of one task, in order, each (kind, what): ("redis", command names...)
    per write of commands, ("redis upkeep", ...) for a connection's upkeep, ("discord",
    "METHOD /route") per REST request."""

    name: str
    task: asyncio.Task[Any] | None
    trips: list[tuple[str, ...]] = field(default_factory=list)

    async def finished(self) -> TaskTrips:
        """This task's trips once it has run to its end (what it does after answering)."""
        if self.task is not None and self.task is not asyncio.current_task():
            await asyncio.wait({self.task})
        return self

    def redis(self) -> list[tuple[str, ...]]:
        """The Redis round trips, each as the names of the commands it carried."""
        return [t[1:] for t in self.trips if t[0] == REDIS]

    def upkeep(self) -> list[tuple[str, ...]]:
        return [t[1:] for t in self.trips if t[0] == UPKEEP]

    def before_answer(self) -> list[tuple[str, ...]]:
        """The Redis round trips made before the interaction was answered."""
        if ANSWER not in self.trips:
            raise AssertionError(f"task {self.name} never answered: {self.trips}")
        return [t[1:] for t in self.trips[:self.trips.index(ANSWER)] if t[0] == REDIS]

    def after_answer(self) -> list[tuple[str, ...]]:
        return self.redis()[len(self.before_answer()):]


@dataclass
class Recording:
    tasks: dict[int, TaskTrips] = field(default_factory=dict)

    def add(self, trip: tuple[str, ...]) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "(no task)"
        self.tasks.setdefault(id(task), TaskTrips(name, task)).trips.append(trip)

    def answered(self) -> list[TaskTrips]:
        """The tasks that answered an interaction, in the order they first made a trip."""
        return [t for t in self.tasks.values() if ANSWER in t.trips]

    def clear(self) -> None:
        self.tasks.clear()


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Record every Redis write and Discord REST request this process makes until the block
    ends (every client in the process: tell them apart by task)."""
    rec = Recording()
    adapter = discord.webhook.async_.AsyncWebhookAdapter
    send = AbstractConnection.send_packed_command
    on_connect = AbstractConnection.on_connect_check_health
    request = discord.http.HTTPClient.request
    webhook_request = adapter.request

    async def counting_send(self: AbstractConnection, command: Any,
                            check_health: bool = True) -> None:
        names = command_names(command)
        upkeep = _connecting.get() or (names == ("PING",) and not check_health)
        rec.add((UPKEEP if upkeep else REDIS, *names))
        await send(self, command, check_health)

    async def connecting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        token = _connecting.set(True)
        try:
            await on_connect(self, *args, **kwargs)
        finally:
            _connecting.reset(token)

    async def counting_request(self: discord.http.HTTPClient, route: discord.http.Route,
                               **kwargs: Any) -> Any:
        rec.add((DISCORD, f"{route.method} {route.path}"))
        return await request(self, route, **kwargs)

    async def counting_webhook_request(self: discord.webhook.async_.AsyncWebhookAdapter,
                                       route: discord.http.Route, *args: Any,
                                       **kwargs: Any) -> Any:
        # Interaction callbacks and follow-ups go through the webhook adapter, not HTTPClient.
        rec.add((DISCORD, f"{route.method} {route.path}"))
        return await webhook_request(self, route, *args, **kwargs)

    # Replacing the libraries' methods for the block is the point.
    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]  # counted
    AbstractConnection.on_connect_check_health = connecting  # type: ignore[method-assign]  # counted
    discord.http.HTTPClient.request = counting_request  # type: ignore[method-assign]  # counted
    adapter.request = counting_webhook_request  # type: ignore[method-assign]  # counted
    try:
        yield rec
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]  # restored
        AbstractConnection.on_connect_check_health = on_connect  # type: ignore[method-assign]  # restored
        discord.http.HTTPClient.request = request  # type: ignore[method-assign]  # restored
        adapter.request = webhook_request  # type: ignore[method-assign]  # restored
