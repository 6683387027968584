"""An in-process test double of Discord's REST API v10 and gateway, for discord.py 2.7.

``FakeDiscord`` is an aiohttp server on 127.0.0.1 (free port) that behaves enough like
Discord for a real, unmodified ``commands.Bot`` to log in, connect to the gateway, sync
application commands, receive slash-command / component / autocomplete interactions and
answer them, and for separate HTTP-only clients (``discord.Webhook.partial`` with an
aiohttp session, or a ``discord.Client`` that logged in without connecting) to edit
interaction messages and post channel messages.

Point discord.py at it with exactly two assignments::

    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)

That is enough for a plain (non-sharded) ``commands.Bot`` in discord.py 2.7.1: it never
calls ``GET /gateway``; it connects straight to ``DEFAULT_GATEWAY`` and later RESUMEs at the
``resume_gateway_url`` from READY (which is the same URL here). ``GET /gateway/bot`` (used by
``AutoShardedBot``) is served too and also answers with ``gateway_url``.

Discord rules the fake enforces (status and JSON error code):

* REST routes other than webhooks, interaction callbacks, ``GET /gateway`` and the
  attachment "CDN" need ``Authorization: Bot <token>``: otherwise 401 / code 0.
* Interaction callbacks: unknown id/token, or later than 3 s after creation on the fake
  clock -> 404 / 10062; a second callback -> 400 / 40060.
* Webhook (interaction token) routes: unknown token or more than 15 min after creation on
  the fake clock -> 401 / 50027; unknown message (e.g. ``@original`` before a callback
  created it) -> 404 / 10008; wrong application id -> 404 / 10015.
* Unknown channel -> 404 / 10003; any uploaded file over 10 MiB, or a request body over
  25,000,000 bytes (Discord's whole-request cap, whatever each file's size) -> 413 / 40005;
  empty message -> 400 / 50006; over-long content / embeds -> 400 / 50035.
* A channel message with ``nonce`` and ``enforce_nonce`` returns the message the same author
  created with that nonce in the last few minutes (``NONCE_WINDOW_S``), creating nothing.

Design choices (documented because tests depend on them):

* Gateway events (including INTERACTION_CREATE) are broadcast to every identified, not
  invalidated gateway session, like Discord does for several sessions of one unsharded
  bot. A session is invalidated when the client closes with 1000/1001 (what
  ``Client.close()`` does); other closes leave it resumable and events sent meanwhile are
  replayed on RESUME.
* Frames are zlib-stream compressed (one shared compressobj per connection, each frame
  ending in a Z_SYNC_FLUSH) when the client asks for ``compress=zlib-stream``, as discord.py
  does by default; otherwise (e.g. zstd-stream) plain JSON text frames are sent, which
  discord.py also accepts.
* Successful REST responses carry no ``X-RateLimit-*`` headers, so discord.py never
  pre-emptively waits; rate limits only happen through ``inject(..., 429)``.
* ``fake.requests`` and ``inject`` paths are relative to the API base, without the query
  string, e.g. ``"/channels/123/messages"`` or ``"/interactions/9/tok/callback"``.
* Embed image/thumbnail urls ``attachment://NAME`` are rewritten to the attachment's URL,
  as Discord does; the file still shows in ``attachments``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import math
import mimetypes
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

__all__ = [
    "DISCORD_EPOCH_MS",
    "MAX_UPLOAD_BYTES",
    "FakeAttachment",
    "FakeClock",
    "FakeDiscord",
    "FakeInteraction",
    "FakeMessage",
    "Injection",
    "snowflake_time",
]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Discord's cap on a whole message request (files and JSON together), as discord.js utilities
# record it (MessageLimits.MaximumRequestSize); bigger bodies get 413 / 40005.
MAX_REQUEST_BYTES = 25_000_000
# How long Discord remembers a nonce for `enforce_nonce` ("the past few minutes").
NONCE_WINDOW_S = 5 * 60
ACK_WINDOW_S = 3.0
TOKEN_LIFETIME_S = 15 * 60
HEARTBEAT_INTERVAL_MS = 41250

# Message flags
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_COMPONENTS_V2 = 1 << 15
_SETTABLE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2

# Gateway intents the fake looks at
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12

# Interaction types
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5

# @everyone's permissions in a new guild (roughly): view, send, embed, attach, history,
# reactions, external emoji, app commands, threads. Never ADMINISTRATOR.
DEFAULT_PERMISSIONS = (
    (1 << 0)  # CREATE_INSTANT_INVITE
    | (1 << 6)  # ADD_REACTIONS
    | (1 << 10)  # VIEW_CHANNEL
    | (1 << 11)  # SEND_MESSAGES
    | (1 << 14)  # EMBED_LINKS
    | (1 << 15)  # ATTACH_FILES
    | (1 << 16)  # READ_MESSAGE_HISTORY
    | (1 << 18)  # USE_EXTERNAL_EMOJIS
    | (1 << 26)  # CHANGE_NICKNAME
    | (1 << 31)  # USE_APPLICATION_COMMANDS
    | (1 << 38)  # SEND_MESSAGES_IN_THREADS
)

_OPTION_TYPES = {
    1: "SUB_COMMAND",
    2: "SUB_COMMAND_GROUP",
    3: "STRING",
    4: "INTEGER",
    5: "BOOLEAN",
    6: "USER",
    7: "CHANNEL",
    8: "ROLE",
    9: "MENTIONABLE",
    10: "NUMBER",
    11: "ATTACHMENT",
}
_SELECT_TYPES = {3, 5, 6, 7, 8}


# --------------------------------------------------------------------------- utilities


def snowflake_time(snowflake: int) -> float:
    """Unix time (seconds) encoded in a snowflake, like ``discord.utils.snowflake_time``."""
    return ((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000.0


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Discord reports width/height for images; PNG is what the bot uploads.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


class FakeClock:
    """Real time plus an offset that tests can push forward with :meth:`advance`.

    All interaction deadlines (3 s ack window, 15 min token lifetime), timestamps and
    snowflakes use this clock, so tests can expire things without sleeping.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        """Monotonic seconds, shifted by the offset (used for deadlines)."""
        return time.monotonic() + self.offset

    def time(self) -> float:
        """Unix wall time, shifted by the offset (used for snowflakes and timestamps)."""
        return time.time() + self.offset

    def now(self) -> dt.datetime:
        """Shifted wall time as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("the fake clock only moves forward")
        self.offset += seconds


class _Snowflakes:
    """Generates snowflakes whose timestamp bits come from the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._inc = 0
        self._last = 0

    def next(self) -> int:
        ms = int(self._clock.time() * 1000) - DISCORD_EPOCH_MS
        self._inc = (self._inc + 1) % 4096
        value = (ms << 22) | (1 << 17) | (1 << 12) | self._inc
        # Strictly increasing even within one millisecond / after 4096 ids.
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return value


class _ApiError(Exception):
    """Raised inside handlers; becomes a Discord-shaped JSON error response."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return _json_response(body, status=self.status)


def _json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # discord.py only parses JSON when Content-Type is *exactly* application/json, so never
    # let aiohttp append "; charset=utf-8" (it would with text=...).
    hdrs = {"Content-Type": "application/json"}
    if headers:
        hdrs.update(headers)
    return web.Response(body=json.dumps(data).encode(), status=status, headers=hdrs)


def _form_error(field_name: str, code: str, message: str) -> _ApiError:
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_name.split(".")):
        errors = {part: errors}
    return _ApiError(400, 50035, "Invalid Form Body", errors)


UNAUTHORIZED = (401, 0, "401: Unauthorized")


# --------------------------------------------------------------------------- data model


@dataclass
class FakeAttachment:
    """A stored upload: raw bytes plus the metadata Discord reports."""

    id: int
    filename: str
    content_type: str
    data: bytes
    url: str = ""
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            out["description"] = self.description
        if self.ephemeral:
            out["ephemeral"] = True
        dims = _png_size(self.data)
        if dims:
            out["width"], out["height"] = dims
        return out


@dataclass
class FakeMessage:
    """A message as the fake stores it.

    ``via`` says how it was created: ``"interaction"`` (a callback), ``"webhook"`` (an
    interaction followup) or ``"bot"`` (``POST /channels/{id}/messages`` with the bot token).
    ``edits`` holds the raw payloads applied by later edits, in order.
    """

    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    via: str
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    message_reference: dict[str, Any] | None = None
    allowed_mentions: dict[str, Any] | None = None
    mentions: list[int] = field(default_factory=list)
    tts: bool = False
    type: int = 0
    created_at: float = 0.0
    edited_at: float | None = None
    interaction_id: int | None = None
    webhook_id: int | None = None
    edits: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    def attachment(self, filename: str) -> FakeAttachment:
        """The attachment called ``filename`` (KeyError if absent)."""
        for att in self.attachments:
            if att.filename == filename:
                return att
        raise KeyError(f"message {self.id} has no attachment {filename!r}")


class FakeInteraction:
    """An interaction the fake sent to the bot, and what the bot answered."""

    def __init__(
        self,
        fake: FakeDiscord,
        *,
        id: int,
        token: str,
        type: int,
        payload: dict[str, Any],
        name: str | None,
        user_id: int,
        guild_id: int | None,
        channel_id: int,
        message_id: int | None,
    ) -> None:
        self._fake = fake
        self.id = id
        self.token = token
        self.type = type
        self.payload = payload
        self.name = name
        self.user_id = user_id
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.message_id = message_id  # component interactions: the clicked message
        self.created_at: dt.datetime = fake.clock.now()
        self._created_mono = fake.clock.monotonic()
        self.response: dict[str, Any] | None = None  # the accepted callback payload
        self.original_id: int | None = None
        self.followup_ids: list[int] = []
        # every callback attempt, accepted or not: (status, code or None, payload)
        self.callback_attempts: list[tuple[int, int | None, dict[str, Any]]] = []
        self._responded = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<FakeInteraction id={self.id} type={self.type} name={self.name!r} "
            f"response_type={self.response_type}>"
        )

    @property
    def acknowledged(self) -> bool:
        return self.response is not None

    @property
    def response_type(self) -> int | None:
        return None if self.response is None else self.response.get("type")

    @property
    def ephemeral(self) -> bool:
        data = (self.response or {}).get("data") or {}
        return bool((data.get("flags") or 0) & EPHEMERAL)

    @property
    def choices(self) -> list[dict[str, Any]] | None:
        """Autocomplete choices the bot answered (type 8), else None."""
        if self.response_type != 8:
            return None
        return list(((self.response or {}).get("data") or {}).get("choices") or [])

    @property
    def original(self) -> FakeMessage | None:
        """The ``@original`` message (None until a callback created/designated one)."""
        if self.original_id is None:
            return None
        return self._fake.messages.get(self.original_id)

    @property
    def followups(self) -> list[FakeMessage]:
        return [self._fake.messages[m] for m in self.followup_ids]

    async def wait_response(self, timeout: float = 5) -> dict[str, Any]:  # noqa: ASYNC109 - the test API takes timeout=
        """Wait until a callback was accepted and return its payload ``{"type", "data"}``."""
        try:
            await asyncio.wait_for(self._responded.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self!r}: no accepted callback within {timeout}s; "
                f"attempts: {[(s, c) for s, c, _ in self.callback_attempts]}"
            ) from None
        assert self.response is not None
        return self.response


@dataclass
class Injection:
    """A pending fault: the next ``remaining`` requests matching method/path get ``status``."""

    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float
    is_global: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method.upper())
            and self.pattern.search(path) is not None
        )

    def response(self) -> web.Response:
        if self.status == 429:
            reset_after = self.retry_after
            headers = {
                # Without Via discord.py takes a 429 for a Cloudflare ban and gives up.
                "Via": "1.1 google",
                "Retry-After": str(max(1, math.ceil(reset_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": f"fake{zlib.crc32(self.pattern.pattern.encode()):08x}",
                "X-RateLimit-Scope": "global" if self.is_global else "user",
            }
            if self.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {
                "message": "You are being rate limited.",
                "retry_after": self.retry_after,
                "global": self.is_global,
            }
            return _json_response(body, status=429, headers=headers)
        reasons = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
        reason = reasons.get(self.status, "Error")
        return _json_response({"code": 0, "message": f"{self.status}: {reason}"}, self.status)


@dataclass
class _Guild:
    id: int
    name: str
    owner_id: int
    everyone_permissions: int
    locale: str = "en-US"
    joined_at: float = 0.0


@dataclass
class _Channel:
    id: int
    guild_id: int | None
    name: str
    nsfw: bool = False
    type: int = 0
    topic: str | None = None
    position: int = 0
    recipient_id: int | None = None
    last_message_id: int | None = None


@dataclass
class _Upload:
    index: int
    filename: str
    content_type: str | None
    data: bytes


# --------------------------------------------------------------------------- gateway


class _Connection:
    """One gateway websocket; a writer task keeps frames in enqueue order."""

    def __init__(self, ws: web.WebSocketResponse, compress: bool) -> None:
        self.ws = ws
        self.compressed = compress
        self._compressor = zlib.compressobj() if compress else None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.session: _Session | None = None
        self.writer: asyncio.Task[None] | None = None
        self.server_closed = False  # closed by the fake: never invalidates the session

    def enqueue(self, item: Any) -> None:
        self.queue.put_nowait(item)

    async def run_writer(self) -> None:
        while True:
            item = await self.queue.get()
            if callable(item):  # a marker (e.g. "READY and GUILD_CREATEs are out")
                item()
                continue
            if self.ws.closed:
                continue
            data = item.encode()
            try:
                if self._compressor is not None:
                    c = self._compressor
                    await self.ws.send_bytes(c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))
                else:
                    await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return


class _Session:
    """A gateway session (survives reconnects until invalidated)."""

    def __init__(self, session_id: str, shard: list[int] | None, intents: int) -> None:
        self.session_id = session_id
        self.shard = shard
        self.intents = intents
        self.seq = 0
        self.events: list[tuple[int, str]] = []  # replay buffer for RESUME
        self.conn: _Connection | None = None
        self.ready = False
        self.invalidated = False
        self.resumes = 0

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.ws.closed

    @property
    def compressed(self) -> bool:
        """Whether the current connection uses zlib-stream compression."""
        return self.conn is not None and self.conn.compressed

    def dispatch(self, event: str, data: Any) -> None:
        self.seq += 1
        text = json.dumps({"op": 0, "t": event, "s": self.seq, "d": data})
        self.events.append((self.seq, text))
        del self.events[:-2000]
        if self.conn is not None:
            self.conn.enqueue(text)


# --------------------------------------------------------------------------- the server


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Any]
    auth: bool


class FakeDiscord:
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

    # ------------------------------------------------------------------ world setup

    def add_guild(
        self,
        guild_id: int,
        name: str = "Test Guild",
        owner_id: int | None = None,
        *,
        everyone_permissions: int = DEFAULT_PERMISSIONS,
        locale: str = "en-US",
    ) -> None:
        """Register a guild the bot is in (sent as GUILD_CREATE on IDENTIFY, or now)."""
        g = _Guild(
            int(guild_id),
            name,
            int(owner_id if owner_id is not None else self.owner_id),
            everyone_permissions,
            locale,
            self.clock.time(),
        )
        self.guilds[g.id] = g
        self._broadcast("GUILD_CREATE", self._guild_create_json(g), INTENT_GUILDS)

    def add_channel(
        self,
        guild_id: int,
        channel_id: int,
        name: str = "general",
        nsfw: bool = False,
        *,
        topic: str | None = None,
    ) -> None:
        """Register (or update) a guild text channel; connected bots get CHANNEL_CREATE/UPDATE."""
        gid = int(guild_id)
        if gid not in self.guilds:
            raise ValueError(f"unknown guild {gid}; add_guild first")
        cid = int(channel_id)
        existing = self.channels.get(cid)
        position = sum(1 for c in self.channels.values() if c.guild_id == gid)
        ch = _Channel(cid, gid, name, nsfw, 0, topic, existing.position if existing else position)
        if existing:
            ch.last_message_id = existing.last_message_id
        self.channels[cid] = ch
        event = "CHANNEL_UPDATE" if existing else "CHANNEL_CREATE"
        self._broadcast(event, self._channel_json(ch), INTENT_GUILDS)

    def add_user(self, user_id: int, name: str | None = None, *, bot: bool = False) -> None:
        """Register a user (unknown users are created on the fly by invoke/click)."""
        uid = int(user_id)
        uname = name or f"user{uid}"
        self.users[uid] = {
            "id": str(uid),
            "username": uname,
            "discriminator": "0",
            "global_name": uname,
            "avatar": None,
            "public_flags": 0,
            "bot": bot,
        }

    def dm_channel_id(self, user_id: int) -> int:
        """The DM channel between the bot and ``user_id`` (created on demand)."""
        uid = int(user_id)
        for ch in self.channels.values():
            if ch.type == 1 and ch.recipient_id == uid:
                return ch.id
        self._user(uid)
        cid = self._snowflakes.next()
        self.channels[cid] = _Channel(cid, None, "", False, 1, recipient_id=uid)
        return cid

    # ------------------------------------------------------------------ conditions

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

    async def wait_for_commands(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - the test API takes timeout=
        """Wait until application commands were synced (global or guild) at least once."""
        await self.wait_for(
            lambda: bool(self.command_syncs), timeout, message="application commands synced"
        )

    # ------------------------------------------------------------------ fault injection

    def inject(
        self,
        method: str,
        path_regex: str,
        status: int,
        count: int = 1,
        retry_after: float = 0.1,
        *,
        is_global: bool = False,
    ) -> Injection:
        """Answer the next ``count`` requests matching method and path with ``status``.

        ``method`` may be ``"*"``; ``path_regex`` is searched in the path relative to the API
        base (e.g. ``r"/channels/\\d+/messages$"``). 429 comes with Discord's body and
        headers (``Retry-After``, ``X-RateLimit-*``, ``Via``); 5xx with a JSON error.
        """
        inj = Injection(
            method.upper(), re.compile(path_regex), int(status), count, retry_after, is_global
        )
        self.injections.append(inj)
        return inj

    # ------------------------------------------------------------------ gateway events

    def dispatch(self, event: str, data: Any) -> None:
        """Send a DISPATCH event to every live gateway session."""
        self._broadcast(event, data)

    def _live_sessions(self) -> list[_Session]:
        return [s for s in self.sessions if not s.invalidated]

    def _broadcast(self, event: str, data: Any, intent: int = 0) -> None:
        # ``intent`` is the gateway intent bit a session needs to receive the event.
        for s in self._live_sessions():
            if not intent or s.intents & intent:
                s.dispatch(event, data)

    def _emit_message(self, event: str, msg: FakeMessage) -> None:
        # Discord tells the bot about its own non-ephemeral messages (MESSAGE_CREATE/UPDATE).
        if msg.ephemeral:
            return
        data = self._message_json(msg)
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
            member = self._member_json(self.bot_user_id, 0, with_user=False)
            member.pop("permissions")
            data["member"] = member
        self._broadcast(
            event, data, INTENT_DIRECT_MESSAGES if msg.guild_id is None else INTENT_GUILD_MESSAGES
        )

    async def disconnect_bots(self, code: int = 4000) -> None:
        """Close every gateway socket with ``code`` (4000 keeps sessions resumable)."""
        for conn in list(self._connections):
            conn.server_closed = True
            await conn.ws.close(code=code, message=b"fake disconnect")

    # ------------------------------------------------------------------ interactions

    async def invoke(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        guild_id: Any = ...,
        channel_id: int | None = None,
        user_id: int | None = None,
        permissions: int = 0,
        app_permissions: int | None = None,
        locale: str = "en-US",
        guild_locale: str | None = None,
        validate: bool = True,
    ) -> FakeInteraction:
        """Send a slash command interaction (type 2) and return it (without waiting).

        ``name`` may address subcommands: ``"queue pause"``. Option values are converted
        to the types of the synced definition (string 3, integer 4, boolean 5, user 6,
        channel 7, role 8, mentionable 9, number 10, attachment 11 given as
        ``(filename, bytes[, content_type])``); unknown/missing-required options, values
        outside ``choices``/``min_*``/``max_*`` raise ValueError (Discord's client would not
        send them); ``validate=False`` sends such values anyway (as a client with a stale
        command definition could), keeping only the type checks. ``guild_id`` defaults to
        the channel's guild (or the first guild's first channel); pass ``guild_id=None`` for
        a DM. ``permissions`` goes into ``member.permissions`` and, unless
        ``app_permissions`` is given, ``app_permissions``.
        """
        ctx = self._context(guild_id, channel_id, user_id)
        ctx["validate"] = validate
        cmd, path = self._find_command(name, ctx["guild_id"])
        built, resolved = self._build_options(cmd, path, options or {}, ctx, focused=None)
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": cmd.get("type", 1)}
        if built:
            data["options"] = built
        if resolved:
            data["resolved"] = resolved
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return self._send_interaction(
            APPLICATION_COMMAND,
            data,
            ctx,
            name=name,
            permissions=permissions,
            app_permissions=app_permissions,
            locale=locale,
            guild_locale=guild_locale,
        )

    async def autocomplete(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        focused: str,
        guild_id: Any = ...,
        channel_id: int | None = None,
        user_id: int | None = None,
        permissions: int = 0,
        app_permissions: int | None = None,
        locale: str = "en-US",
        guild_locale: str | None = None,
        timeout: float = 5,  # noqa: ASYNC109 - the test API takes timeout=
    ) -> list[dict[str, Any]]:
        """Send an autocomplete interaction (type 4) and return the choices the bot answered.

        The focused option's value is sent as the raw typed string, like Discord does.
        """
        ctx = self._context(guild_id, channel_id, user_id)
        cmd, path = self._find_command(name, ctx["guild_id"])
        built, resolved = self._build_options(cmd, path, options or {}, ctx, focused=focused)
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": cmd.get("type", 1),
            "options": built,
        }
        if resolved:
            data["resolved"] = resolved
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        itx = self._send_interaction(
            AUTOCOMPLETE,
            data,
            ctx,
            name=name,
            permissions=permissions,
            app_permissions=app_permissions,
            locale=locale,
            guild_locale=guild_locale,
        )
        await itx.wait_response(timeout)
        return itx.choices or []

    async def click(
        self,
        message_id: int,
        custom_id: str,
        *,
        user_id: int | None = None,
        values: list[str] | None = None,
        permissions: int = 0,
        app_permissions: int | None = None,
        locale: str = "en-US",
        guild_locale: str | None = None,
    ) -> FakeInteraction:
        """Click a button / pick select ``values`` on an existing message (type 3)."""
        msg = self.messages.get(int(message_id))
        if msg is None or msg.deleted:
            raise ValueError(f"no message {message_id}")
        comp = _find_component(msg.components, custom_id)
        if comp is None:
            raise ValueError(f"message {message_id} has no component with custom_id {custom_id!r}")
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; Discord would not send it")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": comp["type"]}
        if comp["type"] in _SELECT_TYPES:
            data["values"] = list(values or [])
        elif values is not None:
            raise ValueError("values only make sense for select menus")
        gid = msg.guild_id if msg.guild_id is not None else None
        ctx = self._context(gid, msg.channel_id, user_id)
        return self._send_interaction(
            MESSAGE_COMPONENT,
            data,
            ctx,
            name=None,
            message=msg,
            permissions=permissions,
            app_permissions=app_permissions,
            locale=locale,
            guild_locale=guild_locale,
        )

    async def submit_modal(
        self,
        custom_id: str,
        values: dict[str, str],
        *,
        guild_id: Any = ...,
        channel_id: int | None = None,
        user_id: int | None = None,
        permissions: int = 0,
    ) -> FakeInteraction:
        """Submit a modal (type 5): ``values`` maps text-input custom_id -> value."""
        ctx = self._context(guild_id, channel_id, user_id)
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
            for k, v in values.items()
        ]
        data = {"custom_id": custom_id, "components": rows}
        return self._send_interaction(
            MODAL_SUBMIT, data, ctx, name=None, permissions=permissions, app_permissions=None
        )

    # ---- interaction helpers

    def _user(self, user_id: int) -> dict[str, Any]:
        if user_id not in self.users:
            self.add_user(user_id)
        return self.users[user_id]

    def _bot_user_json(self) -> dict[str, Any]:
        return {
            "id": str(self.bot_user_id),
            "username": self.bot_name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "public_flags": 0,
            "bot": True,
        }

    def _context(self, guild_id: Any, channel_id: int | None, user_id: int | None) -> dict:
        uid = int(user_id) if user_id is not None else self.owner_id
        self._user(uid)
        if guild_id is None:  # explicit DM
            if channel_id is None:
                cid = self.dm_channel_id(uid)
            else:
                cid = int(channel_id)
                ch = self.channels.get(cid)
                if ch is None:
                    self.channels[cid] = _Channel(cid, None, "", False, 1, recipient_id=uid)
                elif ch.guild_id is not None:
                    raise ValueError(f"channel {cid} belongs to guild {ch.guild_id}, not a DM")
            return {"guild_id": None, "channel_id": cid, "user_id": uid}
        if channel_id is not None:
            cid = int(channel_id)
            ch = self.channels.get(cid)
            if ch is None:
                raise ValueError(f"unknown channel {cid}; add_channel first")
            if guild_id is not ... and ch.guild_id != int(guild_id):
                raise ValueError(f"channel {cid} is not in guild {guild_id}")
            return {"guild_id": ch.guild_id, "channel_id": cid, "user_id": uid}
        gid = next(iter(self.guilds), None) if guild_id is ... else int(guild_id)
        if gid is None or gid not in self.guilds:
            raise ValueError("no guild to invoke in; add_guild/add_channel first or pass guild_id")
        chans = [c for c in self.channels.values() if c.guild_id == gid]
        if not chans:
            raise ValueError(f"guild {gid} has no channels; add_channel first")
        return {"guild_id": gid, "channel_id": chans[0].id, "user_id": uid}

    def _find_command(self, name: str, guild_id: int | None) -> tuple[dict[str, Any], list[str]]:
        parts = name.split()
        if not parts:
            raise ValueError("empty command name")
        pools: list[list[dict[str, Any]]] = []
        if guild_id is not None:
            pools.append(self.guild_commands.get(guild_id, []))
        pools.append(self.global_commands)
        for pool in pools:
            for cmd in pool:
                if cmd["name"] == parts[0] and cmd.get("type", 1) == 1:
                    return cmd, parts[1:]
        known = sorted({c["name"] for p in pools for c in p})
        raise ValueError(f"command {parts[0]!r} is not synced for this context; synced: {known}")

    def _build_options(
        self,
        cmd: dict[str, Any],
        path: list[str],
        values: dict[str, Any],
        ctx: dict,
        focused: str | None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        defs: list[dict[str, Any]] = cmd.get("options") or []
        wrappers: list[dict[str, Any]] = []
        for part in path:
            sub = next(
                (o for o in defs if o["name"] == part and o["type"] in (1, 2)),
                None,
            )
            if sub is None:
                raise ValueError(f"{cmd['name']!r} has no subcommand/group {part!r}")
            wrappers.append({"type": sub["type"], "name": sub["name"]})
            defs = sub.get("options") or []
        if any(o["type"] in (1, 2) for o in defs):
            subs = [o["name"] for o in defs if o["type"] in (1, 2)]
            raise ValueError(f"{cmd['name']!r} needs a subcommand, one of {subs}")
        resolved: dict[str, dict[str, Any]] = {}
        by_name = {o["name"]: o for o in defs}
        for key in values:
            if key not in by_name:
                raise ValueError(f"unknown option {key!r}; options are {sorted(by_name)}")
        if focused is not None and focused not in values:
            raise ValueError(f"focused option {focused!r} needs a (partial) value")
        leaf: list[dict[str, Any]] = []
        for o in defs:
            name = o["name"]
            if name not in values:
                if o.get("required") and focused is None and ctx.get("validate", True):
                    raise ValueError(f"missing required option {name!r}")
                continue
            if name == focused:
                leaf.append(
                    {"name": name, "type": o["type"], "value": str(values[name]), "focused": True}
                )
                continue
            value = self._convert_option(o, values[name], ctx, resolved)
            leaf.append({"name": name, "type": o["type"], "value": value})
        opts = leaf
        for w in reversed(wrappers):
            w["options"] = opts
            opts = [w]
        return opts, resolved

    def _convert_option(
        self, o: dict[str, Any], value: Any, ctx: dict, resolved: dict[str, dict[str, Any]]
    ) -> Any:
        t, name = o["type"], o["name"]
        strict = ctx.get("validate", True)
        if t == 3:
            if not isinstance(value, str):
                raise ValueError(f"option {name!r} is a string, got {value!r}")
            lo, hi = o.get("min_length", 0), o.get("max_length", 6000)
            if strict and not lo <= len(value) <= hi:
                raise ValueError(f"option {name!r}: length {len(value)} not in [{lo}, {hi}]")
            out: Any = value
        elif t == 4:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"option {name!r} is an integer, got {value!r}")
            if strict and abs(value) > 2**53:
                raise ValueError(f"option {name!r}: Discord integers are within +-2**53")
            out = value
        elif t == 10:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"option {name!r} is a number, got {value!r}")
            out = value
        elif t == 5:
            if not isinstance(value, bool):
                raise ValueError(f"option {name!r} is a boolean, got {value!r}")
            out = value
        elif t in (6, 9) and (t == 6 or int(value) in self.users):
            uid = int(value)
            resolved.setdefault("users", {})[str(uid)] = self._user(uid)
            if ctx["guild_id"] is not None:
                resolved.setdefault("members", {})[str(uid)] = self._member_json(
                    uid, 0, with_user=False
                )
            out = str(uid)
        elif t in (8, 9):
            rid = int(value)
            gid = ctx["guild_id"]
            if gid is None or rid != gid:
                raise ValueError(f"option {name!r}: only the @everyone role ({gid}) exists")
            resolved.setdefault("roles", {})[str(rid)] = self._role_json(self.guilds[gid])
            out = str(rid)
        elif t == 7:
            cid = int(value)
            ch = self.channels.get(cid)
            if ch is None:
                raise ValueError(f"option {name!r}: unknown channel {cid}")
            chj = self._channel_json(ch)
            chj["permissions"] = str(DEFAULT_PERMISSIONS)
            resolved.setdefault("channels", {})[str(cid)] = chj
            out = str(cid)
        elif t == 11:
            if not isinstance(value, tuple) or len(value) not in (2, 3):
                raise ValueError(f"option {name!r}: give (filename, bytes[, content_type])")
            fname, data = value[0], bytes(value[1])
            ctype = value[2] if len(value) == 3 else None
            att = self._make_attachment(
                ctx["channel_id"], _Upload(0, fname, ctype, data), ephemeral=True
            )
            resolved.setdefault("attachments", {})[str(att.id)] = att.to_json()
            out = str(att.id)
        else:
            raise ValueError(f"option {name!r}: unsupported type {t}")
        choices = o.get("choices")
        if not strict:
            return out
        if choices and out not in [c["value"] for c in choices]:
            allowed = [c["value"] for c in choices]
            raise ValueError(f"option {name!r}: {out!r} is not one of the choices {allowed}")
        if t in (4, 10):
            if "min_value" in o and out < o["min_value"]:
                raise ValueError(f"option {name!r}: {out} < min_value {o['min_value']}")
            if "max_value" in o and out > o["max_value"]:
                raise ValueError(f"option {name!r}: {out} > max_value {o['max_value']}")
        return out

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
    ) -> FakeInteraction:
        if not any(s.ready for s in self._live_sessions()):
            raise RuntimeError("no bot is connected to the fake gateway; await wait_for_bot()")
        iid = self._snowflakes.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        gid, cid, uid = ctx["guild_id"], ctx["channel_id"], ctx["user_id"]
        app_perms = permissions if app_permissions is None else app_permissions
        ch = self.channels[cid]
        channel = self._channel_json(ch)
        channel["permissions"] = str(app_perms)
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "channel": channel,
            "channel_id": str(cid),
            "token": token,
            "version": 1,
            "locale": locale,
            "app_permissions": str(app_perms),
            "entitlements": [],
            "attachment_size_limit": MAX_UPLOAD_BYTES,
        }
        if gid is not None:
            guild = self.guilds[gid]
            payload["guild_id"] = str(gid)
            payload["guild"] = {"id": str(gid), "locale": guild.locale, "features": []}
            payload["guild_locale"] = guild_locale or guild.locale
            payload["member"] = self._member_json(uid, permissions, with_user=True)
            payload["authorizing_integration_owners"] = {"0": str(gid)}
            payload["context"] = 0
        else:
            payload["user"] = self._user(uid)
            payload["authorizing_integration_owners"] = {"0": "0"}
            payload["context"] = 1
        if message is not None:
            payload["message"] = self._message_json(message)
        itx = FakeInteraction(
            self,
            id=iid,
            token=token,
            type=itype,
            payload=payload,
            name=name,
            user_id=uid,
            guild_id=gid,
            channel_id=cid,
            message_id=message.id if message else None,
        )
        self.interactions[iid] = itx
        self._by_token[token] = itx
        self._broadcast("INTERACTION_CREATE", payload)
        return itx

    # ------------------------------------------------------------------ JSON shapes

    def _role_json(self, g: _Guild) -> dict[str, Any]:
        return {
            "id": str(g.id),
            "name": "@everyone",
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": 0,
            "permissions": str(g.everyone_permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def _member_json(self, uid: int, permissions: int, *, with_user: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "roles": [],
            "joined_at": _iso(self.clock.time() - 86400),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "communication_disabled_until": None,
            "permissions": str(permissions),
        }
        if with_user:
            out["user"] = self._user(uid)
        return out

    def _channel_json(self, ch: _Channel) -> dict[str, Any]:
        if ch.type == 1:
            recipients = [self._user(ch.recipient_id)] if ch.recipient_id else []
            return {
                "id": str(ch.id),
                "type": 1,
                "recipients": recipients,
                "last_message_id": str(ch.last_message_id) if ch.last_message_id else None,
                "flags": 0,
            }
        return {
            "id": str(ch.id),
            "type": ch.type,
            "guild_id": str(ch.guild_id),
            "name": ch.name,
            "position": ch.position,
            "parent_id": None,
            "topic": ch.topic,
            "nsfw": ch.nsfw,
            "rate_limit_per_user": 0,
            "permission_overwrites": [],
            "last_message_id": str(ch.last_message_id) if ch.last_message_id else None,
            "flags": 0,
        }

    def _guild_create_json(self, g: _Guild) -> dict[str, Any]:
        channels = [self._channel_json(c) for c in self.channels.values() if c.guild_id == g.id]
        bot_member = self._member_json(self.bot_user_id, 0, with_user=True)
        bot_member.pop("permissions")
        bot_member["user"] = self._bot_user_json()
        bot_member["joined_at"] = _iso(g.joined_at)
        return {
            "id": str(g.id),
            "name": g.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(g.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": g.locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500000,
            "features": [],
            "roles": [self._role_json(g)],
            "emojis": [],
            "stickers": [],
            "application_id": None,
            "joined_at": _iso(g.joined_at),
            "large": False,
            "unavailable": False,
            "member_count": len(self.users) + 1,
            "voice_states": [],
            "members": [bot_member],
            "channels": channels,
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "premium_progress_bar_enabled": False,
            "lazy": True,
        }

    def _message_json(self, m: FakeMessage, *, with_reference: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(m.id),
            "channel_id": str(m.channel_id),
            "type": m.type,
            "content": m.content,
            "author": self._bot_user_json(),
            "timestamp": _iso(m.created_at),
            "edited_timestamp": _iso(m.edited_at),
            "tts": m.tts,
            "mention_everyone": False,
            "mentions": [self._user(u) for u in m.mentions],
            "mention_roles": [],
            "attachments": [a.to_json() for a in m.attachments],
            "embeds": m.embeds,
            "pinned": False,
            "flags": m.flags,
            "components": m.components,
        }
        if m.webhook_id is not None:
            out["webhook_id"] = str(m.webhook_id)
            out["application_id"] = str(self.application_id)
        if m.interaction_id is not None:
            itx = self.interactions[m.interaction_id]
            meta: dict[str, Any] = {
                "id": str(itx.id),
                "type": itx.type,
                "user": self._user(itx.user_id),
                "authorizing_integration_owners": itx.payload["authorizing_integration_owners"],
            }
            if itx.name:
                meta["name"] = itx.name
            out["interaction_metadata"] = meta
        if m.message_reference is not None:
            out["message_reference"] = m.message_reference
            if with_reference:
                ref = self.messages.get(int(m.message_reference.get("message_id") or 0))
                out["referenced_message"] = (
                    None
                    if ref is None or ref.deleted
                    else self._message_json(ref, with_reference=False)
                )
        return out

    # ------------------------------------------------------------------ HTTP plumbing

    def _build_routes(self) -> None:
        snow = r"(\d+)"
        tok = r"([^/]+)"
        table: list[tuple[str, str, Callable[..., Any], bool]] = [
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("GET", "/users/@me", self._get_me, True),
            ("GET", f"/users/{snow}", self._get_user, True),
            ("POST", "/users/@me/channels", self._create_dm, True),
            ("GET", "/oauth2/applications/@me", self._get_app, True),
            ("GET", "/applications/@me", self._get_app, True),
            ("GET", f"/applications/{snow}/commands", self._get_commands, True),
            ("PUT", f"/applications/{snow}/commands", self._put_commands, True),
            ("POST", f"/applications/{snow}/commands", self._post_command, True),
            ("GET", f"/applications/{snow}/guilds/{snow}/commands", self._get_commands, True),
            ("PUT", f"/applications/{snow}/guilds/{snow}/commands", self._put_commands, True),
            ("POST", f"/applications/{snow}/guilds/{snow}/commands", self._post_command, True),
            ("GET", f"/guilds/{snow}", self._get_guild, True),
            ("GET", f"/guilds/{snow}/channels", self._get_guild_channels, True),
            ("GET", f"/guilds/{snow}/members/{snow}", self._get_member, True),
            ("GET", f"/channels/{snow}", self._get_channel, True),
            ("POST", f"/channels/{snow}/typing", self._typing, True),
            ("GET", f"/channels/{snow}/messages", self._list_messages, True),
            ("POST", f"/channels/{snow}/messages", self._post_channel_message, True),
            ("GET", f"/channels/{snow}/messages/{snow}", self._get_channel_message, True),
            ("PATCH", f"/channels/{snow}/messages/{snow}", self._patch_channel_message, True),
            ("DELETE", f"/channels/{snow}/messages/{snow}", self._delete_channel_message, True),
            ("POST", f"/interactions/{snow}/{tok}/callback", self._callback, False),
            ("POST", f"/webhooks/{snow}/{tok}", self._webhook_post, False),
            ("GET", f"/webhooks/{snow}/{tok}/messages/{tok}", self._webhook_get, False),
            ("PATCH", f"/webhooks/{snow}/{tok}/messages/{tok}", self._webhook_patch, False),
            ("DELETE", f"/webhooks/{snow}/{tok}/messages/{tok}", self._webhook_delete, False),
        ]
        for method, pattern, handler, auth in table:
            self._routes.append(_Route(method, re.compile(f"^{pattern}$"), handler, auth))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._gateway(request)
        if path.startswith("/attachments/"):
            return await self._cdn(request)
        if not path.startswith(API_PREFIX + "/"):
            return _json_response({"code": 0, "message": "404: Not Found"}, 404)
        rel = path[len(API_PREFIX) :]
        method = request.method.upper()
        try:
            for inj in self.injections:
                if inj.matches(method, rel):
                    inj.remaining -= 1
                    inj.hits += 1
                    resp = inj.response()
                    break
            else:
                resp = await self._route(request, method, rel)
        finally:
            # Eat any unread body so keep-alive connections stay usable.
            with contextlib.suppress(Exception):
                await request.release()
        self.requests.append((method, rel, resp.status))
        return resp

    async def _route(self, request: web.Request, method: str, rel: str) -> web.Response:
        allowed = False
        for route in self._routes:
            m = route.pattern.match(rel)
            if m is None:
                continue
            allowed = True
            if route.method != method:
                continue
            try:
                if route.auth and request.headers.get("Authorization") != f"Bot {self.bot_token}":
                    raise _ApiError(*UNAUTHORIZED)
                return await route.handler(request, *m.groups())
            except _ApiError as e:
                return e.response()
            except Exception as exc:
                # A bug in the fake must fail the client fast: a 500 would make discord.py
                # retry for ~25 s. The exception is kept in fake.errors for the test to see.
                self.errors.append(exc)
                return _json_response(
                    {"code": 0, "message": f"fake_discord internal error: {exc!r}"}, 400
                )
        if allowed:
            return _json_response({"code": 0, "message": "405: Method Not Allowed"}, 405)
        return _json_response({"code": 0, "message": "404: Not Found"}, 404)

    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any], list[_Upload]]:
        """Parse a JSON or multipart (payload_json + files[n]) body; enforce the 10 MiB cap."""
        ctype = request.content_type
        uploads: list[_Upload] = []
        payload: dict[str, Any] = {}
        if ctype == "multipart/form-data":
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                raw = await part.read(decode=False)
                fname = part.name or ""
                if fname == "payload_json":
                    payload = json.loads(raw.decode() or "{}")
                    continue
                m = re.fullmatch(r"files\[(\d+)\]", fname) or re.fullmatch(r"file(\d*)", fname)
                if m is None:
                    continue
                index = int(m.group(1) or 0)
                uploads.append(
                    _Upload(
                        index,
                        part.filename or f"file{index}",
                        part.headers.get(aiohttp.hdrs.CONTENT_TYPE),
                        bytes(raw),
                    )
                )
            # Checked after reading everything so the client sees a clean 413 reply.
            if any(len(u.data) > MAX_UPLOAD_BYTES for u in uploads):
                raise _ApiError(413, 40005, "Request entity too large")
            if sum(len(u.data) for u in uploads) > self.max_request_bytes:
                raise _ApiError(413, 40005, "Request entity too large")
        else:
            raw = await request.read()
            if raw:
                try:
                    payload = json.loads(raw)
                except ValueError:
                    raise _ApiError(400, 50109, "The request body contains invalid JSON.") from None
        if not isinstance(payload, dict):
            raise _ApiError(400, 50109, "The request body contains invalid JSON.")
        return payload, uploads

    # ------------------------------------------------------------------ message logic

    def _make_attachment(self, channel_id: int, up: _Upload, *, ephemeral: bool) -> FakeAttachment:
        aid = self._snowflakes.next()
        guessed = mimetypes.guess_type(up.filename)[0]
        # discord.py always labels parts application/octet-stream; Discord sniffs the type.
        ctype = guessed or up.content_type or "application/octet-stream"
        att = FakeAttachment(
            id=aid,
            filename=up.filename,
            content_type=ctype,
            data=up.data,
            url=f"{self.base_url}/attachments/{channel_id}/{aid}/{quote(up.filename)}",
            ephemeral=ephemeral,
        )
        self.attachments[aid] = att
        return att

    def _validate_message(self, payload: dict[str, Any], *, partial: bool) -> None:
        content = payload.get("content")
        if content is not None and len(str(content)) > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        embeds = payload.get("embeds")
        if embeds:
            if len(embeds) > 10:
                raise _form_error(
                    "embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
                )
            total = 0
            for i, e in enumerate(embeds):
                for key, limit in (("title", 256), ("description", 4096)):
                    if len(e.get(key) or "") > limit:
                        raise _form_error(
                            f"embeds.{i}.{key}",
                            "BASE_TYPE_MAX_LENGTH",
                            f"Must be {limit} or fewer in length.",
                        )
                    total += len(e.get(key) or "")
                fields = e.get("fields") or []
                if len(fields) > 25:
                    raise _form_error(
                        f"embeds.{i}.fields",
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 25 or fewer in length.",
                    )
                for f in fields:
                    total += len(f.get("name") or "") + len(f.get("value") or "")
                total += len((e.get("footer") or {}).get("text") or "")
                total += len((e.get("author") or {}).get("name") or "")
            if total > 6000:
                raise _form_error(
                    "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
                )

    def _resolve_embeds(self, embeds: list[dict[str, Any]], atts: list[FakeAttachment]) -> list:
        out = []
        for e in embeds or []:
            e = json.loads(json.dumps(e))
            e.setdefault("type", "rich")
            for key in ("image", "thumbnail"):
                url = (e.get(key) or {}).get("url") or ""
                if url.startswith("attachment://"):
                    name = url[len("attachment://") :]
                    att = next((a for a in atts if a.filename == name), None)
                    if att is not None:
                        e[key] = {**e[key], "url": att.url, "proxy_url": att.url}
                        dims = _png_size(att.data)
                        if dims:
                            e[key]["width"], e[key]["height"] = dims
            out.append(e)
        return out

    def _mentions(self, content: str, allowed: dict[str, Any] | None, reply_to: int | None) -> list:
        found = [int(x) for x in re.findall(r"<@!?(\d+)>", content or "")]
        if allowed is None:
            users = found
        else:
            parse = allowed.get("parse") or []
            listed = {int(u) for u in allowed.get("users") or []}
            users = [u for u in found if "users" in parse or u in listed]
        if reply_to is not None and (allowed is None or allowed.get("replied_user", False)):
            ref = self.messages.get(reply_to)
            if ref is not None and ref.author_id != self.bot_user_id:
                users.append(ref.author_id)
        seen: list[int] = []
        for u in users:
            if u not in seen:
                seen.append(u)
        return seen

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
    ) -> FakeMessage:
        self._validate_message(payload, partial=False)
        ch = self.channels[channel_id]
        flags = int(payload.get("flags") or 0) & flags_mask
        atts = [
            self._make_attachment(channel_id, u, ephemeral=bool(flags & EPHEMERAL)) for u in uploads
        ]
        _apply_attachment_meta(atts, uploads, payload.get("attachments"))
        content = payload.get("content") or ""
        embeds = payload.get("embeds") or []
        components = payload.get("components") or []
        if not allow_empty and not (content or embeds or atts or components or payload.get("poll")):
            raise _ApiError(400, 50006, "Cannot send an empty message")
        ref = payload.get("message_reference")
        reply_to = None
        if ref:
            reply_to = int(ref.get("message_id") or 0)
            target = self.messages.get(reply_to)
            if target is None or target.deleted or target.channel_id != channel_id:
                if ref.get("fail_if_not_exists", True):
                    raise _form_error(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
                ref, reply_to = None, None
            else:
                ref = {
                    "type": ref.get("type", 0),
                    "message_id": str(reply_to),
                    "channel_id": str(channel_id),
                    **({"guild_id": str(ch.guild_id)} if ch.guild_id else {}),
                }
        if msg_type is None:
            msg_type = 19 if ref else 0
        msg = FakeMessage(
            id=self._snowflakes.next(),
            channel_id=channel_id,
            guild_id=ch.guild_id,
            author_id=self.bot_user_id,
            via=via,
            content=content,
            embeds=self._resolve_embeds(embeds, atts),
            attachments=atts,
            components=components,
            flags=flags,
            message_reference=ref,
            allowed_mentions=payload.get("allowed_mentions"),
            mentions=self._mentions(content, payload.get("allowed_mentions"), reply_to),
            tts=bool(payload.get("tts")),
            type=msg_type,
            created_at=self.clock.time(),
            interaction_id=interaction.id if interaction else None,
            webhook_id=self.application_id if via in ("interaction", "webhook") else None,
            payload=payload,
        )
        self.messages[msg.id] = msg
        if not msg.ephemeral:
            ch.last_message_id = msg.id
        self._emit_message("MESSAGE_CREATE", msg)
        return msg

    def _edit_message(
        self, msg: FakeMessage, payload: dict[str, Any], uploads: list[_Upload]
    ) -> None:
        self._validate_message(payload, partial=True)
        if "attachments" in payload and payload["attachments"] is not None:
            # Discord: only attachments listed (by id) survive; uploads are added below.
            keep = {str(a.get("id")) for a in payload["attachments"]}
            msg.attachments = [a for a in msg.attachments if str(a.id) in keep]
        new = [self._make_attachment(msg.channel_id, u, ephemeral=msg.ephemeral) for u in uploads]
        _apply_attachment_meta(new, uploads, payload.get("attachments"))
        msg.attachments.extend(new)
        if "content" in payload:
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            msg.embeds = self._resolve_embeds(payload["embeds"] or [], msg.attachments)
        if "components" in payload:
            msg.components = payload["components"] or []
        if "allowed_mentions" in payload:
            msg.allowed_mentions = payload["allowed_mentions"]
        if "flags" in payload and payload["flags"] is not None:
            msg.flags = (msg.flags & ~_SETTABLE_FLAGS) | (int(payload["flags"]) & _SETTABLE_FLAGS)
        msg.flags &= ~LOADING  # the first edit of a deferred response ends "thinking"
        msg.edited_at = self.clock.time()
        msg.edits.append(payload)
        self._emit_message("MESSAGE_UPDATE", msg)

    def _delete_message(self, msg: FakeMessage) -> None:
        msg.deleted = True
        if msg.ephemeral:
            return
        data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
        intent = INTENT_DIRECT_MESSAGES if msg.guild_id is None else INTENT_GUILD_MESSAGES
        self._broadcast("MESSAGE_DELETE", data, intent)

    # ------------------------------------------------------------------ REST handlers

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        return _json_response(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14400000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        me = self._bot_user_json()
        me.update(
            {"verified": True, "mfa_enabled": False, "flags": 0, "bio": "", "locale": "en-US"}
        )
        return _json_response(me)

    async def _get_user(self, request: web.Request, uid: str) -> web.Response:
        if int(uid) == self.bot_user_id:
            return _json_response(self._bot_user_json())
        if int(uid) not in self.users:
            raise _ApiError(404, 10013, "Unknown User")
        return _json_response(self.users[int(uid)])

    async def _create_dm(self, request: web.Request) -> web.Response:
        payload, _ = await self._read_body(request)
        uid = int(payload.get("recipient_id") or 0)
        if uid not in self.users:
            raise _ApiError(400, 50033, "Invalid Recipients")
        return _json_response(self._channel_json(self.channels[self.dm_channel_id(uid)]))

    async def _get_app(self, request: web.Request) -> web.Response:
        owner = self._user(self.owner_id)
        return _json_response(
            {
                "id": str(self.application_id),
                "name": self.app_name,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "hook": True,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": owner,
                "team": None,
                "flags": 0,
                "rpc_origins": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "role_connections_verification_url": None,
                "tags": [],
                "approximate_guild_count": len(self.guilds),
                "bot": self._bot_user_json(),
                "integration_types_config": {"0": {}},
            }
        )

    def _commands_for(self, app_id: str, guild_id: str | None) -> list[dict[str, Any]]:
        if int(app_id) != self.application_id:
            raise _ApiError(403, 50001, "Missing Access")
        if guild_id is None:
            return self.global_commands
        gid = int(guild_id)
        if gid not in self.guilds:
            raise _ApiError(403, 50001, "Missing Access")
        return self.guild_commands.setdefault(gid, [])

    async def _get_commands(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response:
        return _json_response(self._commands_for(app_id, guild_id))

    async def _put_commands(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response:
        self._commands_for(app_id, guild_id)
        raw = await request.read()
        try:
            payload = json.loads(raw or b"[]")
        except ValueError:
            raise _ApiError(400, 50109, "The request body contains invalid JSON.") from None
        if not isinstance(payload, list):
            raise _form_error("_root", "LIST_TYPE_CONVERT", "Must be a list.")
        gid = int(guild_id) if guild_id else None
        out = [self._store_command(c, gid, i) for i, c in enumerate(payload)]
        names = [(c.get("type", 1), c["name"]) for c in out]
        if len(set(names)) != len(names):
            raise _form_error("_root", "APPLICATION_COMMANDS_DUPLICATE_NAME", "duplicate name")
        if gid is None:
            self.global_commands = out
        else:
            self.guild_commands[gid] = out
        self.command_syncs.append((gid, out))
        return _json_response(out)

    async def _post_command(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response:
        cmds = self._commands_for(app_id, guild_id)
        payload, _ = await self._read_body(request)
        gid = int(guild_id) if guild_id else None
        cmd = self._store_command(payload, gid, 0)
        cmds[:] = [c for c in cmds if (c.get("type", 1), c["name"]) != (cmd["type"], cmd["name"])]
        cmds.append(cmd)
        self.command_syncs.append((gid, list(cmds)))
        return _json_response(cmd, status=201)

    def _store_command(self, c: dict[str, Any], gid: int | None, index: int) -> dict[str, Any]:
        ctype = int(c.get("type", 1))
        name = c.get("name") or ""
        where = f"{index}"
        if ctype == 1:
            _check_name(name, f"{where}.name")
            desc = c.get("description") or ""
            if not 1 <= len(desc) <= 100:
                raise _form_error(
                    f"{where}.description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            _check_options(c.get("options") or [], f"{where}.options", depth=0)
        elif not 1 <= len(name) <= 32:
            raise _form_error(
                f"{where}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."
            )
        key = (gid, ctype, name)
        if key not in self._command_ids:
            self._command_ids[key] = self._snowflakes.next()
        out = {
            "id": str(self._command_ids[key]),
            "application_id": str(self.application_id),
            "version": str(self._snowflakes.next()),
            "default_member_permissions": c.get("default_member_permissions"),
            "type": ctype,
            "name": name,
            "name_localizations": c.get("name_localizations"),
            "description": c.get("description") or "",
            "description_localizations": c.get("description_localizations"),
            "nsfw": bool(c.get("nsfw", False)),
            "contexts": c.get("contexts"),
            "integration_types": c.get("integration_types") or [0],
        }
        if c.get("options"):
            out["options"] = c["options"]
        if gid is not None:
            out["guild_id"] = str(gid)
        else:
            out["dm_permission"] = c.get("dm_permission", True)
        return out

    async def _get_guild(self, request: web.Request, gid: str) -> web.Response:
        g = self.guilds.get(int(gid))
        if g is None:
            raise _ApiError(404, 10004, "Unknown Guild")
        data = self._guild_create_json(g)
        for key in ("channels", "members", "threads", "presences", "voice_states", "joined_at"):
            data.pop(key, None)
        return _json_response(data)

    async def _get_guild_channels(self, request: web.Request, gid: str) -> web.Response:
        if int(gid) not in self.guilds:
            raise _ApiError(404, 10004, "Unknown Guild")
        chans = [self._channel_json(c) for c in self.channels.values() if c.guild_id == int(gid)]
        return _json_response(chans)

    async def _get_member(self, request: web.Request, gid: str, uid: str) -> web.Response:
        if int(gid) not in self.guilds:
            raise _ApiError(404, 10004, "Unknown Guild")
        if int(uid) == self.bot_user_id:
            m = self._member_json(self.bot_user_id, 0, with_user=False)
            m["user"] = self._bot_user_json()
        elif int(uid) in self.users:
            m = self._member_json(int(uid), 0, with_user=True)
        else:
            raise _ApiError(404, 10007, "Unknown Member")
        m.pop("permissions")
        return _json_response(m)

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

    # ---- interaction callback

    async def _callback(self, request: web.Request, iid: str, token: str) -> web.Response:
        itx = self.interactions.get(int(iid))
        if itx is None or itx.token != token:
            raise _ApiError(404, 10062, "Unknown interaction")
        try:
            payload, uploads = await self._read_body(request)
        except _ApiError as e:
            itx.callback_attempts.append((e.status, e.code, {}))
            raise
        try:
            resp = self._apply_callback(itx, payload, uploads)
        except _ApiError as e:
            itx.callback_attempts.append((e.status, e.code, payload))
            raise
        itx.callback_attempts.append((200, None, payload))
        itx.response = payload
        itx._responded.set()
        if request.query.get("with_response", "").lower() in ("1", "true"):
            return _json_response(resp)
        return web.Response(status=204)

    def _apply_callback(
        self, itx: FakeInteraction, payload: dict[str, Any], uploads: list[_Upload]
    ) -> dict[str, Any]:
        if itx.acknowledged:
            raise _ApiError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock.monotonic() - itx._created_mono > ACK_WINDOW_S:
            raise _ApiError(404, 10062, "Unknown interaction")
        rtype = payload.get("type")
        data = payload.get("data") or {}
        allowed = {
            APPLICATION_COMMAND: {4, 5, 9},
            MESSAGE_COMPONENT: {4, 5, 6, 7, 9},
            MODAL_SUBMIT: {4, 5, 6, 7},
            AUTOCOMPLETE: {8},
        }[itx.type]
        if rtype not in allowed:
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", f"Invalid type {rtype}")
        message: FakeMessage | None = None
        if rtype == 4:
            message = self._create_message(
                itx.channel_id,
                data,
                uploads,
                via="interaction",
                flags_mask=_SETTABLE_FLAGS | EPHEMERAL,
                interaction=itx,
                msg_type=20 if itx.type == APPLICATION_COMMAND else 0,
            )
            itx.original_id = message.id
        elif rtype == 5:
            flags = (int(data.get("flags") or 0) & EPHEMERAL) | LOADING
            message = self._create_message(
                itx.channel_id,
                {"content": "", "flags": flags},
                [],
                via="interaction",
                flags_mask=EPHEMERAL | LOADING,
                interaction=itx,
                allow_empty=True,
                msg_type=20 if itx.type == APPLICATION_COMMAND else 0,
            )
            itx.original_id = message.id
        elif rtype in (6, 7):
            if itx.message_id is None:
                raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "No message")
            message = self.messages[itx.message_id]
            if rtype == 7:
                self._edit_message(message, data, uploads)
            itx.original_id = message.id
        elif rtype == 8:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise _form_error(
                    "data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            for i, c in enumerate(choices):
                if not 1 <= len(str(c.get("name", ""))) <= 100:
                    raise _form_error(
                        f"data.choices.{i}.name",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.",
                    )
        interaction: dict[str, Any] = {"id": str(itx.id), "type": itx.type}
        resource: dict[str, Any] = {"type": rtype}
        if message is not None:
            interaction["response_message_id"] = str(message.id)
            interaction["response_message_loading"] = bool(message.flags & LOADING)
            interaction["response_message_ephemeral"] = message.ephemeral
            resource["message"] = self._message_json(message)
        return {"interaction": interaction, "resource": resource}

    # ---- webhook (interaction token) routes

    def _webhook_itx(self, app_id: str, token: str) -> FakeInteraction:
        itx = self._by_token.get(token)
        if itx is None:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        if int(app_id) != self.application_id:
            raise _ApiError(404, 10015, "Unknown Webhook")
        if self.clock.monotonic() - itx._created_mono > TOKEN_LIFETIME_S:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        return itx

    def _webhook_message(self, itx: FakeInteraction, mid: str) -> FakeMessage:
        if mid == "@original":
            msg = itx.original
        else:
            try:
                wanted = int(mid)
            except ValueError:
                raise _ApiError(404, 10008, "Unknown Message") from None
            ok = wanted == itx.original_id or wanted in itx.followup_ids
            msg = self.messages.get(wanted) if ok else None
        if msg is None or msg.deleted:
            raise _ApiError(404, 10008, "Unknown Message")
        return msg

    async def _webhook_post(self, request: web.Request, app_id: str, token: str) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        payload, uploads = await self._read_body(request)
        orig = itx.original
        if orig is not None and orig.flags & LOADING and not orig.edits:
            # Discord: the first followup after a deferred reply replaces the "thinking" one.
            self._edit_message(orig, payload, uploads)
            msg = orig
        else:
            msg = self._create_message(
                itx.channel_id,
                payload,
                uploads,
                via="webhook",
                flags_mask=_SETTABLE_FLAGS | EPHEMERAL,
                interaction=itx,
            )
            itx.followup_ids.append(msg.id)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return _json_response(self._message_json(msg))
        return web.Response(status=204)

    async def _webhook_get(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        return _json_response(self._message_json(self._webhook_message(itx, mid)))

    async def _webhook_patch(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        payload, uploads = await self._read_body(request)
        msg = self._webhook_message(itx, mid)
        self._edit_message(msg, payload, uploads)
        return _json_response(self._message_json(msg))

    async def _webhook_delete(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        self._delete_message(self._webhook_message(itx, mid))
        return web.Response(status=204)

    # ---- attachment "CDN"

    async def _cdn(self, request: web.Request) -> web.Response:
        m = re.fullmatch(r"/attachments/(\d+)/(\d+)/(.+)", request.path)
        att = self.attachments.get(int(m.group(2))) if m else None
        if m is None or att is None or att.filename != m.group(3):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type})

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        compress = request.query.get("compress") == "zlib-stream"
        conn = _Connection(ws, compress)
        conn.writer = asyncio.create_task(conn.run_writer())
        self._connections.add(conn)
        conn.enqueue(
            json.dumps(
                {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}, "s": None, "t": None}
            )
        )
        if request.query.get("encoding", "json") != "json":
            await ws.close(code=4002, message=b"Error while decoding payload.")
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    # discord.py only ever sends JSON text; anything else is a protocol error.
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                try:
                    await self._gateway_op(conn, frame)
                except Exception as exc:  # a bug in the fake: keep it visible to the test
                    self.errors.append(exc)
        finally:
            self._connections.discard(conn)
            if conn.writer is not None:
                conn.writer.cancel()
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                # Client-side 1000/1001 closes end the session, like Discord.
                if ws.close_code in (1000, 1001) and not conn.server_closed:
                    session.invalidated = True
        return ws

    async def _gateway_op(self, conn: _Connection, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:
            conn.enqueue(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
        elif op == 2:
            if conn.session is not None:
                await conn.ws.close(code=4005, message=b"Already authenticated.")
                return
            if not isinstance(d, dict) or d.get("token") != self.bot_token:
                await conn.ws.close(code=4004, message=b"Authentication failed.")
                return
            session = _Session(secrets.token_hex(16), d.get("shard"), int(d.get("intents") or 0))
            self.sessions.append(session)
            session.conn = conn
            conn.session = session
            ready: dict[str, Any] = {
                "v": 10,
                "user": self._bot_user_json()
                | {"verified": True, "mfa_enabled": False, "flags": 0},
                "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
                "session_id": session.session_id,
                "session_type": "normal",
                "resume_gateway_url": self.gateway_url,
                "application": {"id": str(self.application_id), "flags": 0},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": ["us-east"],
                "auth": {},
                "user_settings": {},
                "_trace": ['["fake-discord",{}]'],
            }
            if session.shard is not None:
                ready["shard"] = session.shard
            session.dispatch("READY", ready)
            if session.intents & INTENT_GUILDS:  # without it Discord sends no GUILD_CREATE
                for g in self.guilds.values():
                    session.dispatch("GUILD_CREATE", self._guild_create_json(g))

            def mark_ready(s: _Session = session) -> None:
                s.ready = True

            conn.enqueue(mark_ready)
        elif op == 6:
            d = d if isinstance(d, dict) else {}
            session = next(
                (
                    s
                    for s in self.sessions
                    if s.session_id == d.get("session_id") and not s.invalidated
                ),
                None,
            )
            if session is None or d.get("token") != self.bot_token:
                conn.enqueue(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
                return
            if session.conn is not None and session.conn is not conn:
                old = session.conn
                old.server_closed = True
                session.conn = None
                await old.ws.close(code=4009, message=b"Session superseded")
            seq = int(d.get("seq") or 0)
            session.conn = conn
            conn.session = session
            for s, text in session.events:
                if s > seq:
                    conn.enqueue(text)
            session.resumes += 1
            session.dispatch("RESUMED", {"_trace": ['["fake-discord",{}]']})
        elif op in (3, 4, 8, 31):
            pass  # presence / voice / member requests / soundboard: accepted and ignored
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        else:
            await conn.ws.close(code=4001, message=b"Unknown opcode.")


# --------------------------------------------------------------------------- helpers


def _apply_attachment_meta(
    atts: list[FakeAttachment], uploads: list[_Upload], meta: list[dict[str, Any]] | None
) -> None:
    # payload_json "attachments": entries whose id is an upload index rename/describe it.
    if not meta:
        return
    by_index = {str(m.get("id")): m for m in meta}
    for att, up in zip(atts, uploads, strict=True):
        m = by_index.get(str(up.index))
        if m is None:
            continue
        if m.get("filename"):
            att.filename = m["filename"]
            att.url = att.url.rsplit("/", 1)[0] + "/" + quote(att.filename)
        if m.get("description") is not None:
            att.description = m["description"]


def _find_component(components: Iterable[dict[str, Any]], custom_id: str) -> dict | None:
    for c in components or []:
        if c.get("custom_id") == custom_id:
            return c
        for key in ("components", "accessory"):
            inner = c.get(key)
            if isinstance(inner, dict):
                inner = [inner]
            if inner:
                found = _find_component(inner, custom_id)
                if found is not None:
                    return found
    return None


_NAME_RE = re.compile(r"^[-_'\w]{1,32}$")


def _check_name(name: str, where: str) -> None:
    if not _NAME_RE.match(name) or name != name.lower():
        raise _form_error(
            where, "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}"
        )


def _check_options(options: list[dict[str, Any]], where: str, depth: int) -> None:
    if len(options) > 25:
        raise _form_error(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    names: set[str] = set()
    for i, o in enumerate(options):
        here = f"{where}.{i}"
        _check_name(o.get("name") or "", f"{here}.name")
        if o["name"] in names:
            raise _form_error(
                f"{here}.name", "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "dup"
            )
        names.add(o["name"])
        desc = o.get("description") or ""
        if not 1 <= len(desc) <= 100:
            raise _form_error(
                f"{here}.description",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if o.get("type") not in _OPTION_TYPES:
            raise _form_error(f"{here}.type", "BASE_TYPE_CHOICES", "Value must be one of ...")
        if o.get("required"):
            if seen_optional:
                raise _form_error(
                    f"{here}.required",
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        if len(o.get("choices") or []) > 25:
            raise _form_error(
                f"{here}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        if o.get("type") in (1, 2):
            if depth >= 2 or (o["type"] == 2 and depth >= 1):
                raise _form_error(
                    f"{here}.type", "APPLICATION_COMMAND_OPTION_TYPE_INVALID", "nesting"
                )
            _check_options(o.get("options") or [], f"{here}.options", depth + 1)


def _describe(predicate: Callable[..., Any]) -> str:
    try:
        src = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        src = repr(predicate)
    return src if len(src) < 200 else src[:200] + "..."
