"""What the fake's mixins reach in each other through ``self``, declared once for the type
checker: each mixin is written against ``FakeParts`` (only when type checking; at run time
``FakeDiscord`` simply has them all), and ``FakeDiscord`` must implement every member, so a
renamed or re-typed part is caught in every mixin that uses it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from ponybot_testkit.fake_discord.clock import FakeClock
    from ponybot_testkit.fake_discord.gateway import _Session
    from ponybot_testkit.fake_discord.model import (
        FakeAttachment,
        FakeInteraction,
        FakeMessage,
        _Channel,
        _Guild,
        _Upload,
    )


class FakeParts(Protocol):
    # server.py
    clock: FakeClock
    messages: dict[int, FakeMessage]
    recommended_shards: int | None
    max_guilds_per_session: int

    # attachments.py
    async def _cdn(self, request: web.Request) -> web.Response: ...
    def _make_attachment(
        self, channel_id: int, up: _Upload, *, ephemeral: bool
    ) -> FakeAttachment: ...

    # callback.py
    async def _callback(self, request: web.Request, iid: str, token: str) -> web.Response: ...

    # gateway.py
    def _broadcast(self, event: str, data: Any, intent: int = 0) -> list[_Session]: ...
    def _emit_message(self, event: str, msg: FakeMessage) -> None: ...
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse: ...
    def _live_sessions(self) -> list[_Session]: ...

    # interactions.py
    def _context(self, guild_id: Any, channel_id: int | None, user_id: int | None) -> dict: ...
    def _send_interaction(
        self,
        itype: int,
        data: dict[str, Any],
        ctx: dict,
        *,
        name: str | None,
        message: FakeMessage | None = None,
        permissions: int = 0,
        app_permissions: int | None = None,
        locale: str = "en-US",
        guild_locale: str | None = None,
    ) -> FakeInteraction: ...

    # messages.py
    def _create_message(
        self,
        channel_id: int,
        payload: dict[str, Any],
        uploads: list[_Upload],
        *,
        via: str,
        flags_mask: int,
        interaction: FakeInteraction | None = None,
        allow_empty: bool = False,
        msg_type: int | None = None,
    ) -> FakeMessage: ...
    def _delete_message(self, msg: FakeMessage) -> None: ...
    def _edit_message(
        self, msg: FakeMessage, payload: dict[str, Any], uploads: list[_Upload]
    ) -> None: ...

    # options.py
    def _build_options(
        self,
        cmd: dict[str, Any],
        path: list[str],
        values: dict[str, Any],
        ctx: dict,
        focused: str | None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...
    def _find_command(
        self, name: str, guild_id: int | None
    ) -> tuple[dict[str, Any], list[str]]: ...

    # rest_channels.py
    async def _delete_channel_message(
        self, request: web.Request, cid: str, mid: str
    ) -> web.Response: ...
    async def _get_channel(self, request: web.Request, cid: str) -> web.Response: ...
    async def _get_channel_message(
        self, request: web.Request, cid: str, mid: str
    ) -> web.Response: ...
    async def _list_messages(self, request: web.Request, cid: str) -> web.Response: ...
    async def _patch_channel_message(
        self, request: web.Request, cid: str, mid: str
    ) -> web.Response: ...
    async def _post_channel_message(self, request: web.Request, cid: str) -> web.Response: ...
    async def _typing(self, request: web.Request, cid: str) -> web.Response: ...

    # rest_commands.py
    async def _get_commands(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response: ...
    async def _post_command(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response: ...
    async def _put_commands(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response: ...

    # rest_world.py
    async def _create_dm(self, request: web.Request) -> web.Response: ...
    async def _get_app(self, request: web.Request) -> web.Response: ...
    async def _get_gateway(self, request: web.Request) -> web.Response: ...
    async def _get_gateway_bot(self, request: web.Request) -> web.Response: ...
    async def _get_guild(self, request: web.Request, gid: str) -> web.Response: ...
    async def _get_guild_channels(self, request: web.Request, gid: str) -> web.Response: ...
    async def _get_me(self, request: web.Request) -> web.Response: ...
    async def _get_member(self, request: web.Request, gid: str, uid: str) -> web.Response: ...
    async def _get_user(self, request: web.Request, uid: str) -> web.Response: ...

    # routing.py
    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any], list[_Upload]]: ...

    # server.py
    @property
    def base_url(self) -> str: ...
    @property
    def gateway_url(self) -> str: ...

    # shapes.py
    def _bot_user_json(self) -> dict[str, Any]: ...
    def _channel_json(self, ch: _Channel) -> dict[str, Any]: ...
    def _guild_create_json(self, g: _Guild) -> dict[str, Any]: ...
    def _member_json(self, uid: int, permissions: int, *, with_user: bool) -> dict[str, Any]: ...
    def _message_json(self, m: FakeMessage, *, with_reference: bool = True) -> dict[str, Any]: ...
    def _role_json(self, g: _Guild) -> dict[str, Any]: ...

    # webhooks.py
    async def _webhook_delete(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response: ...
    async def _webhook_get(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response: ...
    async def _webhook_patch(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response: ...
    async def _webhook_post(
        self, request: web.Request, app_id: str, token: str
    ) -> web.Response: ...

    # world.py
    def _user(self, user_id: int) -> dict[str, Any]: ...
    def dm_channel_id(self, user_id: int) -> int: ...
