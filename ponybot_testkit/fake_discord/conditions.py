"""What tests wait for and look at: synced commands, channel posts, and ``wait_for``.

``wait_for`` polls a predicate instead of sleeping, and on timeout says which condition
failed and which requests the fake served last, so a failing test explains itself.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.gateway import _Session
    from ponybot_testkit.fake_discord.model import FakeMessage


class Conditions:
    """Read-outs and waits over the fake's state."""

    global_commands: list[dict[str, Any]]
    guild_commands: dict[int, list[dict[str, Any]]]
    command_syncs: list[tuple[int | None, list[dict[str, Any]]]]
    messages: dict[int, FakeMessage]
    requests: list[tuple[str, str, int]]
    sessions: list[_Session]

    @property
    def commands(self) -> list[dict[str, Any]]:
        """All synced command definitions: global first, then guild ones (with guild_id)."""
        out = list(self.global_commands)
        for cmds in self.guild_commands.values():
            out.extend(cmds)
        return out

    def channel_messages(
        self, channel_id: int, *, include_deleted: bool = False
    ) -> list[FakeMessage]:
        """Messages posted in ``channel_id`` with the bot token (``via == "bot"``), oldest first."""
        cid = int(channel_id)
        return [
            m
            for m in self.messages.values()
            if m.channel_id == cid and m.via == "bot" and (include_deleted or not m.deleted)
        ]

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 10,  # noqa: ASYNC109 - the test API takes timeout=
        *,
        message: str | None = None,
    ) -> Any:
        """Poll ``predicate()`` until it is truthy and return its value.

        Exceptions raised by the predicate count as "not yet" (so ``lambda: msgs[0]`` works);
        on timeout a TimeoutError names the predicate, the last exception and the last
        requests the fake served.
        """
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            try:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                last_exc = None
            except Exception as exc:
                last_exc = exc
            if time.monotonic() >= deadline:
                what = message or _describe(predicate)
                detail = f"; last error: {last_exc!r}" if last_exc else ""
                raise TimeoutError(
                    f"condition not met within {timeout}s: {what}{detail}; "
                    f"last requests: {self.requests[-8:]}"
                )
            await asyncio.sleep(0.005)

    async def wait_for_bot(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - the test API takes timeout=
        """Wait until a bot IDENTIFYed and READY + all GUILD_CREATEs were sent to it."""
        await self.wait_for(
            lambda: any(s.ready and s.connected for s in self.sessions),
            timeout,
            message="a bot identified and received READY + GUILD_CREATE",
        )

    async def wait_for_shards(self, shard_count: int, timeout: float = 10) -> None:  # noqa: ASYNC109 - the test API takes timeout=
        """Wait until every shard ``0..shard_count-1`` has a session (IDENTIFY's ``shard``
        ``[id, shard_count]``) that received READY + its GUILD_CREATEs and is connected."""
        await self.wait_for(
            lambda: {s.shard[0] for s in self.sessions
                     if s.shard is not None and s.shard[1] == shard_count
                     and s.ready and s.connected and not s.invalidated}
            == set(range(shard_count)),
            timeout,
            message=f"all {shard_count} shards identified and received READY + GUILD_CREATE",
        )

    async def wait_for_commands(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - the test API takes timeout=
        """Wait until application commands were synced (global or guild) at least once."""
        await self.wait_for(
            lambda: bool(self.command_syncs), timeout, message="application commands synced"
        )


def _describe(predicate: Callable[..., Any]) -> str:
    try:
        src = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        src = repr(predicate)
    return src if len(src) < 200 else src[:200] + "..."
