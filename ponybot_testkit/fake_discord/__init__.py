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
``resume_gateway_url`` from READY (which is the same URL here). An ``AutoShardedBot`` given a
``shard_count`` does the same; without one it asks ``GET /gateway/bot``, which answers with
``gateway_url`` and ``shards``: ``recommended_shards``, or one per 1,000 servers.

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
* Context menu commands (types 2, 3) with a description or options -> 400 / 50035; a
  message command is invoked only on a live, non-ephemeral message, from its channel, and only
  when synced as a message command there (``invoke_on_message`` raises ValueError otherwise,
  as Discord's client would not offer it).

Design choices (documented because tests depend on them):

* Gateway events (including INTERACTION_CREATE) go to every identified, not invalidated
  gateway session whose shard gets them, by Discord's rule: a session that IDENTIFYed with
  ``shard: [id, count]`` gets a server's events when ``(guild_id >> 22) % count == id``, and
  events of no server (DMs) on shard 0 only; READY and its GUILD_CREATEs list that shard's
  servers. A session without ``shard`` gets everything (several such sessions all do, as for
  one unsharded bot). ``FakeInteraction.delivered_to`` and ``_Session.delivered`` say who got
  what; ``wait_for_shards(count)`` waits for every shard. IDENTIFY with an impossible shard is
  closed with 4010, and a session that would hold more than ``max_guilds_per_session`` servers
  (2,500, as Discord; tests lower it) with 4011 "sharding required". A session is
  invalidated when the client closes with 1000/1001 (what ``Client.close()`` does); other
  closes leave it resumable and events sent meanwhile are replayed on RESUME.
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

The package, one concern a module: ``rules`` (Discord's limits, numbers and error shapes),
``clock`` (fake time and snowflakes), ``model`` (what the fake stores), ``faults``
(``inject``), ``gateway`` (the websocket side), ``routing`` (route table, auth, bodies),
``world`` (guilds, channels, users), ``conditions`` (what tests wait for), ``interactions``,
``message_commands`` and ``options`` (what a user sends: commands, clicks, message context
menus, messages with attachments), ``shapes`` (Discord's JSON for what is stored),
``messages`` and ``attachments`` (creating, editing, deleting), the REST handlers
(``rest_world``, ``rest_commands``, ``rest_channels``, ``callback``, ``webhooks``) and
``server`` (``FakeDiscord``, composing them all).
"""

from ponybot_testkit.fake_discord.clock import DISCORD_EPOCH_MS, FakeClock, snowflake_time
from ponybot_testkit.fake_discord.faults import Injection
from ponybot_testkit.fake_discord.model import FakeAttachment, FakeInteraction, FakeMessage
from ponybot_testkit.fake_discord.rules import MAX_UPLOAD_BYTES
from ponybot_testkit.fake_discord.server import FakeDiscord

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
