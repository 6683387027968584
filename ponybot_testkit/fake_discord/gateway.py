"""The fake's gateway: websocket sessions, IDENTIFY / RESUME, and dispatching events.

A ``_Session`` outlives its websocket (``_Connection``) until the client closes with
1000/1001, keeping a replay buffer so a RESUME gets what it missed; events go to every live
session whose intents ask for them and whose shard gets them, as Discord routes them: a session
that IDENTIFYed with ``shard: [id, count]`` gets a server's events only when
``(guild_id >> 22) % count == id``, and events of no server (DMs) only on shard 0; READY and the
GUILD_CREATEs after it name that shard's servers only. A session without ``shard`` gets
everything, like one unsharded bot. IDENTIFY with an impossible shard is closed with 4010, and a
session that would hold more than ``max_guilds_per_session`` servers with 4011 (Discord:
"sharding required" from 2,500). Frames are zlib-stream compressed when the client asks for it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import zlib
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.model import FakeMessage, _Guild
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)

HEARTBEAT_INTERVAL_MS = 41250

# Gateway intents the fake looks at
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12

# Discord closes a session that would hold more servers than this (4011, sharding required).
MAX_GUILDS_PER_SESSION = 2500
# The servers per shard GET /gateway/bot's recommendation assumes (Discord: about 1,000).
GUILDS_PER_SHARD = 1000


def shard_for(guild_id: int | None, shard_count: int) -> int:
    """Discord's rule (docs: Gateway, Sharding): a server's events go to shard
    ``(guild_id >> 22) % num_shards``; DMs only to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def guild_of_event(event: str, data: Any) -> int | None:
    """The server an event belongs to, None for a DM or no server."""
    if not isinstance(data, dict):
        return None
    raw = data.get("id") if event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE") \
        else data.get("guild_id")
    return int(raw) if raw is not None else None


def valid_shard(shard: Any) -> bool:
    """IDENTIFY's ``shard``: ``[shard_id, num_shards]`` with ``0 <= shard_id < num_shards``."""
    return (isinstance(shard, list) and len(shard) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shard)
            and 0 <= shard[0] < shard[1])


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
        # The events dispatched to this session (the last 5,000), in order: who got what.
        self.delivered: list[tuple[str, Any]] = []

    def receives(self, guild_id: int | None) -> bool:
        """Whether Discord would send this session the events of server ``guild_id``."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return shard_for(guild_id, count) == shard_id

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.ws.closed

    @property
    def compressed(self) -> bool:
        """Whether the current connection uses zlib-stream compression."""
        return self.conn is not None and self.conn.compressed

    def dispatch(self, event: str, data: Any) -> None:
        self.delivered.append((event, data))
        del self.delivered[:-5000]
        self.seq += 1
        text = json.dumps({"op": 0, "t": event, "s": self.seq, "d": data})
        self.events.append((self.seq, text))
        del self.events[:-2000]
        if self.conn is not None:
            self.conn.enqueue(text)


class GatewayServer(FakeParts):
    """The websocket endpoint and event dispatch.

    Uses the bot's identity (``bot_token``, ``application_id``, ``gateway_url``), the guilds
    for READY / GUILD_CREATE, and the JSON shapes (``_bot_user_json``, ``_guild_create_json``,
    ``_message_json``, ``_member_json``) from ``shapes``.
    """

    bot_token: str
    bot_user_id: int
    application_id: int
    guilds: dict[int, _Guild]
    sessions: list[_Session]
    errors: list[BaseException]
    _connections: set[_Connection]

    max_guilds_per_session: int

    def dispatch(self, event: str, data: Any) -> None:
        """Send a DISPATCH event to every live gateway session whose shard gets it."""
        self._broadcast(event, data)

    def _live_sessions(self) -> list[_Session]:
        return [s for s in self.sessions if not s.invalidated]

    def _broadcast(self, event: str, data: Any, intent: int = 0) -> list[_Session]:
        """Dispatch to the live sessions that get it; returns them. ``intent`` is the gateway
        intent bit a session needs to receive the event."""
        guild_id = guild_of_event(event, data)
        got = []
        for s in self._live_sessions():
            if (not intent or s.intents & intent) and s.receives(guild_id):
                s.dispatch(event, data)
                got.append(s)
        return got

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
            shard = d.get("shard")
            if shard is not None and not valid_shard(shard):
                await conn.ws.close(code=4010, message=b"Invalid shard.")
                return
            session = _Session(secrets.token_hex(16), shard, int(d.get("intents") or 0))
            guilds = [g for g in self.guilds.values() if session.receives(g.id)]
            if len(guilds) > self.max_guilds_per_session:
                await conn.ws.close(code=4011, message=b"Sharding required.")
                return
            self.sessions.append(session)
            session.conn = conn
            conn.session = session
            ready: dict[str, Any] = {
                "v": 10,
                "user": self._bot_user_json()
                | {"verified": True, "mfa_enabled": False, "flags": 0},
                "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
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
                for g in guilds:
                    session.dispatch("GUILD_CREATE", self._guild_create_json(g))

            def mark_ready(s: _Session = session) -> None:
                s.ready = True

            conn.enqueue(mark_ready)
        elif op == 6:
            d = d if isinstance(d, dict) else {}
            resumed = next(
                (
                    s
                    for s in self.sessions
                    if s.session_id == d.get("session_id") and not s.invalidated
                ),
                None,
            )
            if resumed is None or d.get("token") != self.bot_token:
                conn.enqueue(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
                return
            session = resumed
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
