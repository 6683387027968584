"""Channel routes the bot uses with its token: read a channel, type, list, post, edit and
delete its messages.

A post with ``nonce`` and ``enforce_nonce`` returns the message the same nonce created in
the last ``NONCE_WINDOW_S`` instead of posting twice, which is what makes a retried post
exactly-once. Ephemeral messages are invisible here, as on Discord.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ponybot_testkit.fake_discord.rules import (
    _SETTABLE_FLAGS,
    NONCE_WINDOW_S,
    _ApiError,
    _json_response,
)

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import FakeClock
    from ponybot_testkit.fake_discord.model import FakeMessage, _Channel
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class ChannelRoutes(FakeParts):
    """Handlers for ``/channels/{id}`` and its messages; message logic from ``messages``."""

    bot_user_id: int
    clock: FakeClock
    channels: dict[int, _Channel]
    messages: dict[int, FakeMessage]
    _nonces: dict[tuple[int, str], FakeMessage]

    def _channel(self, cid: str) -> _Channel:
        ch = self.channels.get(int(cid))
        if ch is None:
            raise _ApiError(404, 10003, "Unknown Channel")
        return ch

    async def _get_channel(self, request: web.Request, cid: str) -> web.Response:
        return _json_response(self._channel_json(self._channel(cid)))

    async def _typing(self, request: web.Request, cid: str) -> web.Response:
        self._channel(cid)
        return web.Response(status=204)

    async def _list_messages(self, request: web.Request, cid: str) -> web.Response:
        ch = self._channel(cid)
        limit = max(1, min(100, int(request.query.get("limit", 50))))
        msgs = [
            m
            for m in self.messages.values()
            if m.channel_id == ch.id and not m.deleted and not m.ephemeral
        ]
        if "before" in request.query:
            msgs = [m for m in msgs if m.id < int(request.query["before"])]
        if "after" in request.query:
            msgs = [m for m in msgs if m.id > int(request.query["after"])]
            msgs = msgs[:limit]
        msgs = sorted(msgs, key=lambda m: m.id, reverse=True)[:limit]
        return _json_response([self._message_json(m) for m in msgs])

    async def _post_channel_message(self, request: web.Request, cid: str) -> web.Response:
        ch = self._channel(cid)
        payload, uploads = await self._read_body(request)
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            seen = self._nonces.get((ch.id, str(nonce)))
            if seen is not None and self.clock.time() - seen.created_at < NONCE_WINDOW_S:
                return _json_response(self._message_json(seen))
        msg = self._create_message(ch.id, payload, uploads, via="bot", flags_mask=_SETTABLE_FLAGS)
        if nonce is not None:
            self._nonces[(ch.id, str(nonce))] = msg
        return _json_response(self._message_json(msg))

    def _channel_message(self, cid: str, mid: str) -> FakeMessage:
        ch = self._channel(cid)
        msg = self.messages.get(int(mid))
        if msg is None or msg.deleted or msg.channel_id != ch.id or msg.ephemeral:
            raise _ApiError(404, 10008, "Unknown Message")
        return msg

    async def _get_channel_message(self, request: web.Request, cid: str, mid: str) -> web.Response:
        return _json_response(self._message_json(self._channel_message(cid, mid)))

    async def _patch_channel_message(
        self, request: web.Request, cid: str, mid: str
    ) -> web.Response:
        msg = self._channel_message(cid, mid)
        payload, uploads = await self._read_body(request)
        if msg.author_id != self.bot_user_id:
            raise _ApiError(403, 50005, "Cannot edit a message authored by another user")
        self._edit_message(msg, payload, uploads)
        return _json_response(self._message_json(msg))

    async def _delete_channel_message(
        self, request: web.Request, cid: str, mid: str
    ) -> web.Response:
        self._delete_message(self._channel_message(cid, mid))
        return web.Response(status=204)
