"""``FakeDiscord``: the fake's state and lifecycle, composed from one mixin per concern.

This module holds everything the parts share (the bot's identity, the world, messages,
interactions, commands, sessions, requests seen) and starts / stops the aiohttp server;
what happens to that state lives in the mixins, each in its own module: ``world``,
``conditions``, ``faults``, ``gateway``, ``interactions``, ``message_commands``, ``options``,
``shapes``, ``routing``, ``messages``, ``attachments``, ``rest_world``, ``rest_commands``,
``rest_channels``, ``callback`` and ``webhooks``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from ponybot_testkit.fake_discord.attachments import Attachments
from ponybot_testkit.fake_discord.callback import CallbackRoute
from ponybot_testkit.fake_discord.clock import FakeClock, _Snowflakes
from ponybot_testkit.fake_discord.conditions import Conditions
from ponybot_testkit.fake_discord.faults import FaultInjection, Injection
from ponybot_testkit.fake_discord.gateway import (
    MAX_GUILDS_PER_SESSION,
    GatewayServer,
    _Connection,
    _Session,
)
from ponybot_testkit.fake_discord.interactions import Interactions
from ponybot_testkit.fake_discord.message_commands import MessageCommands
from ponybot_testkit.fake_discord.messages import MessageLogic
from ponybot_testkit.fake_discord.model import (
    FakeAttachment,
    FakeInteraction,
    FakeMessage,
    _Channel,
    _Guild,
)
from ponybot_testkit.fake_discord.options import CommandOptions
from ponybot_testkit.fake_discord.rest_channels import ChannelRoutes
from ponybot_testkit.fake_discord.rest_commands import CommandRoutes
from ponybot_testkit.fake_discord.rest_world import WorldRoutes
from ponybot_testkit.fake_discord.routing import Routing, _Route
from ponybot_testkit.fake_discord.rules import API_PREFIX, MAX_REQUEST_BYTES
from ponybot_testkit.fake_discord.shapes import JsonShapes
from ponybot_testkit.fake_discord.webhooks import WebhookRoutes
from ponybot_testkit.fake_discord.world import WorldSetup


class FakeDiscord(
    WorldSetup,
    Conditions,
    FaultInjection,
    GatewayServer,
    Interactions,
    MessageCommands,
    CommandOptions,
    JsonShapes,
    Routing,
    MessageLogic,
    Attachments,
    WorldRoutes,
    CommandRoutes,
    ChannelRoutes,
    CallbackRoute,
    WebhookRoutes,
):
    """A fake Discord (REST v10 + gateway) on 127.0.0.1 for discord.py tests."""

    def __init__(
        self,
        bot_token: str = "test-token",
        application_id: int = 1000000000000000001,
        bot_user_id: int | None = None,
        owner_id: int = 1000000000000000002,
        *,
        bot_name: str = "PonyBot",
        app_name: str = "PonyBot",
    ) -> None:
        self.bot_token = bot_token
        self.application_id = int(application_id)
        self.bot_user_id = int(bot_user_id if bot_user_id is not None else application_id)
        self.owner_id = int(owner_id)
        self.bot_name = bot_name
        self.app_name = app_name
        self.clock = FakeClock()
        self._snowflakes = _Snowflakes(self.clock)

        self.guilds: dict[int, _Guild] = {}
        self.channels: dict[int, _Channel] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, FakeMessage] = {}
        # Discord's whole-request cap; tests lower it to reach it with small pictures.
        self.max_request_bytes = MAX_REQUEST_BYTES
        # (channel id, nonce) -> the message created with it, for `enforce_nonce`.
        self._nonces: dict[tuple[int, str], FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        # Every download from the attachment "CDN", by path, in order.
        self.cdn_requests: list[str] = []
        self.interactions: dict[int, FakeInteraction] = {}
        self._by_token: dict[str, FakeInteraction] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.command_syncs: list[tuple[int | None, list[dict[str, Any]]]] = []
        self._command_ids: dict[tuple[int | None, int, str], int] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.errors: list[BaseException] = []  # unexpected exceptions inside the fake
        self.injections: list[Injection] = []
        self.sessions: list[_Session] = []
        self._connections: set[_Connection] = set()
        # Gateway sharding: a session with more servers is refused (4011); tests lower it.
        self.max_guilds_per_session = MAX_GUILDS_PER_SESSION
        # GET /gateway/bot's `shards`; None: one per GUILDS_PER_SHARD servers, as Discord does.
        self.recommended_shards: int | None = None

        self.add_user(self.owner_id, name="owner")
        self._routes: list[_Route] = []
        self._build_routes()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeDiscord is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """Value for ``DiscordWebSocket.DEFAULT_GATEWAY`` (discord.py appends the query)."""
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Bind a free loopback port and start serving."""
        # Uploads may exceed aiohttp's 1 MiB default; Discord's own limit is checked per file.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # Port 0: the OS picks a free port atomically (no probe-then-bind race).
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Close gateway sockets (1001, resumable) and stop the server."""
        for conn in list(self._connections):
            conn.server_closed = True
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")
            if conn.writer is not None:
                conn.writer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
