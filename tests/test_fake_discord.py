"""Proves that ponybot_testkit/fake_discord behaves like Discord for a real discord.py bot.

One module-scoped fixture starts the fake, points discord.py at it (Route.BASE and
DiscordWebSocket.DEFAULT_GATEWAY, the same two assignments the project makes), logs a real
``commands.Bot`` in, runs ``bot.connect()`` as a task and tears everything down again.
Every test waits on conditions (never on fixed sleeps) so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from ponybot_testkit.fake_discord import MAX_UPLOAD_BYTES, FakeDiscord, snowflake_time

TOKEN = "test-token"
APP_ID = 1100000000000000001
BOT_ID = 1100000000000000002
OWNER_ID = 1100000000000000003
USER_ID = 1100000000000000004
GUILD_ID = 1100000000000000010
CHANNEL_ID = 1100000000000000011
NSFW_CHANNEL_ID = 1100000000000000012


def _png(width: int = 2, height: int = 3) -> bytes:
    """A tiny valid PNG (the fake reads width/height from its IHDR like Discord)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- the test bot


class LikeButton(discord.ui.DynamicItem[discord.ui.Button], template=r"pony:like:(?P<id>\d+)"):
    """A persistent button; its handler must be reached through the fake's click()."""

    def __init__(self, pony_id: int) -> None:
        super().__init__(discord.ui.Button(label="Like", custom_id=f"pony:like:{pony_id}"))
        self.pony_id = pony_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any
    ) -> LikeButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: ProbeBot = interaction.client  # type: ignore[assignment]
        bot.events.append(("like", self.pony_id, interaction.user.id))
        await interaction.response.edit_message(content=f"liked {self.pony_id}", view=None)


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    """A modal whose submission must come back through the fake's submit_modal()."""

    text: discord.ui.TextInput[FeedbackModal] = discord.ui.TextInput(
        label="Text", custom_id="feedback_text"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot: ProbeBot = interaction.client  # type: ignore[assignment]
        bot.events.append(("modal", self.text.value))
        await interaction.response.send_message(f"thanks: {self.text.value}", ephemeral=True)


class ProbeCog(commands.Cog):
    """Slash commands exercising each interaction-response path."""

    def __init__(self, bot: ProbeBot) -> None:
        self.bot = bot

    @app_commands.command(description="Echo text back")
    async def echo(
        self, interaction: discord.Interaction, text: str, times: int = 1, ephemeral: bool = False
    ) -> None:
        # Record the Python types discord.py produced: proves the fake typed the options.
        self.bot.events.append(("echo", type(text), type(times), type(ephemeral)))
        ch = interaction.channel
        self.bot.events.append(
            ("channel", getattr(ch, "nsfw", None), interaction.permissions.value)
        )
        self.bot.events.append(("member", isinstance(interaction.user, discord.Member)))
        await interaction.response.send_message(text * times, ephemeral=ephemeral)

    @app_commands.command(description="Waits for the test before answering")
    async def gated(self, interaction: discord.Interaction) -> None:
        self.bot.entered.set()
        await self.bot.gate.wait()
        try:
            await interaction.response.send_message("too late?")
        except discord.HTTPException as exc:
            self.bot.errors.append(exc)

    @app_commands.command(description="Acknowledges twice")
    async def twice(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("first")
        try:
            # A fresh InteractionResponse bypasses discord.py's client-side "already
            # responded" guard, so the second ack really reaches the (fake) server.
            await discord.InteractionResponse(interaction).send_message("second")
        except discord.HTTPException as exc:
            self.bot.errors.append(exc)

    @app_commands.command(description="Defers; the worker finishes via webhook")
    async def later(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)

    @app_commands.command(description="Never answers")
    async def silent(self, interaction: discord.Interaction) -> None:
        self.bot.events.append(("silent", interaction.id))

    @app_commands.command(description="Sends a message with a like button")
    async def button(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(LikeButton(42))
        await interaction.response.send_message("pick", view=view)

    @app_commands.command(description="Uploads a picture")
    async def upload(self, interaction: discord.Interaction) -> None:
        embed = discord.Embed(title="pony").set_image(url="attachment://pony.png")
        file = discord.File(io.BytesIO(_png()), filename="pony.png")
        await interaction.response.send_message(embed=embed, file=file)

    @app_commands.command(description="Opens a modal")
    async def feedback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())

    @app_commands.command(description="Pick a model")
    async def pick(
        self,
        interaction: discord.Interaction,
        model: str,
        size: Literal["square", "portrait"] = "square",
        steps: app_commands.Range[int, 1, 50] = 20,
    ) -> None:
        await interaction.response.send_message(f"{model} {size} {steps}")

    @pick.autocomplete("model")
    async def _pick_model(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = ["v6", "v7", "xl"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    queue = app_commands.Group(name="queue", description="Queue control")

    @queue.command(name="pause", description="Pause the queue")
    async def queue_pause(self, interaction: discord.Interaction, minutes: float) -> None:
        self.bot.events.append(("pause", minutes))
        await interaction.response.send_message(f"paused {minutes}")

    @app_commands.command(description="Guild-only command")
    @app_commands.guilds(GUILD_ID)
    async def guildping(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("guild pong")


async def inspect_message(interaction: discord.Interaction, message: discord.Message) -> None:
    """A message context menu (Apps → Inspect): records the message discord.py resolved."""
    bot: ProbeBot = interaction.client  # type: ignore[assignment]
    attachments = [(a.filename, a.content_type, a.width, a.height, a.url)
                   for a in message.attachments]
    bot.events.append(("inspect", message.id, message.author.id, message.content, attachments))
    await interaction.response.send_message(f"inspected {message.id}", ephemeral=True)


class ProbeBot(commands.Bot):
    """A minimal real bot: default intents, syncs its commands in setup_hook."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default())
        self.events: list[tuple[Any, ...]] = []
        self.errors: list[Exception] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def setup_hook(self) -> None:
        await self.add_cog(ProbeCog(self))
        self.add_dynamic_items(LikeButton)
        self.tree.add_command(app_commands.ContextMenu(name="Inspect", callback=inspect_message))
        await self.tree.sync()
        await self.tree.sync(guild=discord.Object(GUILD_ID))


@dataclass
class Env:
    fake: FakeDiscord
    bot: ProbeBot


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[Env]:
    """Fake Discord + a connected real bot, shared by the module's tests."""
    fake = FakeDiscord(
        bot_token=TOKEN, application_id=APP_ID, bot_user_id=BOT_ID, owner_id=OWNER_ID
    )
    fake.add_guild(GUILD_ID, name="Pony Test", owner_id=OWNER_ID)
    fake.add_channel(GUILD_ID, CHANNEL_ID, name="general")
    fake.add_channel(GUILD_ID, NSFW_CHANNEL_ID, name="lewd", nsfw=True)
    fake.add_user(USER_ID, name="twilight")
    await fake.start()
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    bot = ProbeBot()
    task: asyncio.Task[None] | None = None
    try:
        await bot.login(TOKEN)
        task = asyncio.create_task(bot.connect())
        await fake.wait_for_bot(timeout=10)
        await fake.wait_for_commands(timeout=10)
        yield Env(fake, bot)
    finally:
        await bot.close()
        if task is not None:
            await asyncio.wait_for(task, 10)
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
        await fake.close()
    assert not fake.errors, f"the fake itself raised: {fake.errors}"


@pytest.fixture
def e(env: Env) -> Env:
    """The shared env with the bot's per-test records cleared."""
    env.bot.events.clear()
    env.bot.errors.clear()
    env.bot.entered.clear()
    env.bot.gate.clear()
    return env


@pytest_asyncio.fixture(loop_scope="session")
async def http_client(env: Env) -> AsyncIterator[discord.Client]:
    """An HTTP-only discord.Client (login, no gateway), like the worker process uses."""
    client = discord.Client(intents=discord.Intents.default())
    await client.login(TOKEN)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def aio() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, as a separate worker process would own."""
    async with aiohttp.ClientSession() as s:
        yield s


# --------------------------------------------------------------------------- tests


async def test_login_connect_and_sync(e: Env) -> None:
    """Login, gateway connect (zlib-stream) and global + guild command sync."""
    fake, bot = e.fake, e.bot
    assert bot.user is not None and bot.user.id == BOT_ID
    assert bot.application_id == APP_ID
    assert (await bot.application_info()).owner.id == OWNER_ID
    names = {c["name"] for c in fake.commands}
    assert {"echo", "gated", "queue", "pick", "guildping"} <= names
    guild_cmds = fake.guild_commands[GUILD_ID]
    assert [c["name"] for c in guild_cmds] == ["guildping"]
    assert all(int(c["id"]) > 0 and c["application_id"] == str(APP_ID) for c in fake.commands)
    # The gateway delivered GUILD_CREATE: the guild and its channels are cached.
    guild = await fake.wait_for(lambda: bot.get_guild(GUILD_ID))
    assert guild.name == "Pony Test" and guild.owner_id == OWNER_ID
    lewd = guild.get_channel(NSFW_CHANNEL_ID)
    assert isinstance(lewd, discord.TextChannel) and lewd.is_nsfw()
    assert ("PUT", f"/applications/{APP_ID}/commands", 200) in fake.requests
    # discord.py asked for zlib-stream and decoded the fake's compressed frames.
    assert any(s.connected and s.compressed for s in fake.sessions)
    with pytest.raises(ValueError, match="not synced"):
        await fake.invoke("nope")


async def test_slash_command_round_trip_with_typed_options(e: Env) -> None:
    """Options are typed from the synced definition; type 4 creates @original."""
    fake = e.fake
    itx = await fake.invoke(
        "echo", {"text": "hay", "times": 2}, channel_id=CHANNEL_ID, user_id=USER_ID, permissions=8
    )
    resp = await itx.wait_response()
    assert resp["type"] == 4 and itx.response_type == 4 and not itx.ephemeral
    assert itx.original is not None and itx.original.content == "hayhay"
    assert itx.original.via == "interaction" and itx.original.author_id == BOT_ID
    assert ("echo", str, int, bool) in e.bot.events
    assert ("channel", False, 8) in e.bot.events
    assert ("member", True) in e.bot.events
    assert abs(snowflake_time(itx.id) - fake.clock.time()) < 5
    assert discord.utils.snowflake_time(itx.id).timestamp() == pytest.approx(
        itx.created_at.timestamp(), abs=0.01
    )
    with pytest.raises(ValueError, match="integer"):
        await fake.invoke("echo", {"text": "x", "times": "2"})
    with pytest.raises(ValueError, match="missing required option 'text'"):
        await fake.invoke("echo", {})


async def test_ephemeral_answer_and_nsfw_channel(e: Env) -> None:
    """Flags 64 make the answer ephemeral; channel.nsfw reaches the bot."""
    itx = await e.fake.invoke(
        "echo", {"text": "psst", "ephemeral": True}, channel_id=NSFW_CHANNEL_ID
    )
    await itx.wait_response()
    assert itx.ephemeral and itx.original is not None and itx.original.flags & 64
    assert ("channel", True, 0) in e.bot.events


async def test_subcommand_and_guild_command(e: Env) -> None:
    """'queue pause' addresses a subcommand; guild commands carry guild_id."""
    itx = await e.fake.invoke("queue pause", {"minutes": 2.5})
    await itx.wait_response()
    assert ("pause", 2.5) in e.bot.events
    assert itx.original is not None and itx.original.content == "paused 2.5"
    itx = await e.fake.invoke("guildping", guild_id=GUILD_ID)
    await itx.wait_response()
    assert itx.original is not None and itx.original.content == "guild pong"


async def test_autocomplete(e: Env) -> None:
    """A type 4 interaction; the bot's type 8 choices come back."""
    choices = await e.fake.autocomplete("pick", {"model": "v"}, focused="model")
    assert choices == [{"name": "v6", "value": "v6"}, {"name": "v7", "value": "v7"}]


async def test_choices_and_ranges_are_enforced_like_the_discord_client(e: Env) -> None:
    """Values Discord's client cannot send are refused unless validate=False."""
    fake = e.fake
    with pytest.raises(ValueError, match="not one of the choices"):
        await fake.invoke("pick", {"model": "v6", "size": "huge"})
    with pytest.raises(ValueError, match="max_value"):
        await fake.invoke("pick", {"model": "v6", "steps": 99})
    itx = await fake.invoke("pick", {"model": "v6", "steps": 50, "size": "portrait"})
    await itx.wait_response()
    assert itx.original is not None and itx.original.content == "v6 portrait 50"
    # validate=False sends it anyway, as a client with a stale definition could.
    itx = await fake.invoke("pick", {"model": "v6", "steps": 99}, validate=False)
    await itx.wait_response()
    assert itx.original is not None and itx.original.content == "v6 square 99"


async def test_ack_after_three_seconds_is_unknown_interaction(e: Env) -> None:
    """An answer after the 3 s window (fake clock) gets 404 / 10062."""
    fake, bot = e.fake, e.bot
    itx = await fake.invoke("gated")
    try:
        await asyncio.wait_for(bot.entered.wait(), 5)
        fake.clock.advance(3.5)  # miss the 3 s window without sleeping
    finally:
        bot.gate.set()
    await fake.wait_for(lambda: bot.errors)
    err = bot.errors[0]
    assert isinstance(err, discord.NotFound) and err.code == 10062
    assert itx.response is None and itx.callback_attempts[-1][:2] == (404, 10062)


async def test_second_ack_is_rejected(e: Env) -> None:
    """A second callback gets 400 / 40060."""
    itx = await e.fake.invoke("twice")
    await e.fake.wait_for(lambda: e.bot.errors)
    err = e.bot.errors[0]
    assert isinstance(err, discord.HTTPException) and err.status == 400 and err.code == 40060
    assert itx.response_type == 4 and itx.original is not None
    assert itx.original.content == "first"


async def test_component_click_reaches_dynamic_item(e: Env) -> None:
    """click() reaches a DynamicItem; type 7 edits the clicked message."""
    fake = e.fake
    itx = await fake.invoke("button")
    await itx.wait_response()
    msg = itx.original
    assert msg is not None and msg.components
    click = await fake.click(msg.id, "pony:like:42", user_id=USER_ID)
    resp = await click.wait_response()
    assert resp["type"] == 7
    assert ("like", 42, USER_ID) in e.bot.events
    assert msg.content == "liked 42" and msg.components == []
    assert msg.edits and msg.edits[-1]["content"] == "liked 42"
    with pytest.raises(ValueError):
        await fake.click(msg.id, "pony:like:42")  # the button is gone now


async def test_multipart_callback_stores_file(e: Env, aio: aiohttp.ClientSession) -> None:
    """A multipart callback stores the file; attachment:// embeds are resolved."""
    itx = await e.fake.invoke("upload")
    await itx.wait_response()
    msg = itx.original
    assert msg is not None
    att = msg.attachment("pony.png")
    assert att.data == _png() and att.content_type == "image/png"
    # Discord rewrites attachment:// to the attachment's URL.
    assert msg.embeds[0]["image"]["url"] == att.url
    async with aio.get(att.url) as r:
        assert r.status == 200 and await r.read() == _png()


async def test_webhook_edit_original_with_file(e: Env, aio: aiohttp.ClientSession) -> None:
    """A separate Webhook.partial edits @original with Discord's attachment rules."""
    fake = e.fake
    itx = await fake.invoke("later")
    await itx.wait_response()
    assert itx.response_type == 5 and itx.original is not None
    assert itx.original.flags & 128  # "thinking"
    # A separate process only knows application id + token.
    hook = discord.Webhook.partial(APP_ID, itx.token, session=aio)
    first = discord.File(io.BytesIO(_png()), filename="a.png")
    edited = await hook.edit_message("@original", content="done", attachments=[first])
    assert edited.content == "done" and [a.filename for a in edited.attachments] == ["a.png"]
    orig = itx.original
    assert orig.content == "done" and not orig.flags & 128
    assert orig.attachment("a.png").data == _png()
    # Discord semantics: listed attachments stay, new uploads are added...
    second = discord.File(io.BytesIO(b"GIF89a"), filename="b.gif")
    await hook.edit_message("@original", attachments=[edited.attachments[0], second])
    assert [a.filename for a in orig.attachments] == ["a.png", "b.gif"]
    # ...and attachments left out of the list are removed.
    await hook.edit_message("@original", attachments=[])
    assert orig.attachments == [] and len(orig.edits) == 3
    fetched = await hook.fetch_message(orig.id)
    assert fetched.id == orig.id
    follow = await hook.send("more", wait=True)
    assert fake.messages[follow.id].via == "webhook" and itx.followups[0].id == follow.id
    await hook.delete_message(follow.id)
    assert fake.messages[follow.id].deleted
    with pytest.raises(discord.NotFound):
        await hook.fetch_message(follow.id)


async def test_original_before_callback_is_unknown_message(
    e: Env, aio: aiohttp.ClientSession
) -> None:
    """@original does not exist before a callback: 404 / 10008."""
    itx = await e.fake.invoke("silent")
    await e.fake.wait_for(lambda: ("silent", itx.id) in e.bot.events)
    hook = discord.Webhook.partial(APP_ID, itx.token, session=aio)
    with pytest.raises(discord.NotFound) as info:
        await hook.fetch_message("@original")  # type: ignore[arg-type]
    assert info.value.code == 10008


async def test_token_expires_after_15_minutes(http_client: discord.Client, e: Env) -> None:
    """After 15 min (fake clock) the token gives 401 / 50027; bot posts still work."""
    fake = e.fake
    itx = await fake.invoke("echo", {"text": "old"})
    await itx.wait_response()
    assert itx.original is not None
    # The worker's way: a partial webhook on the HTTP-only client, edited by message id.
    hook = discord.Webhook.partial(APP_ID, itx.token, client=http_client)
    await hook.edit_message(itx.original.id, content="still ok")
    fake.clock.advance(15 * 60 + 1)
    with pytest.raises(discord.HTTPException) as info:
        await hook.edit_message(itx.original.id, content="too late")
    assert info.value.status == 401 and info.value.code == 50027
    assert itx.original.content == "still ok"
    # The bot token still works for a channel post replying to the stale message.
    channel = http_client.get_partial_messageable(CHANNEL_ID, guild_id=GUILD_ID)
    ref = discord.MessageReference(
        message_id=itx.original.id, channel_id=CHANNEL_ID, fail_if_not_exists=False
    )
    mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(USER_ID)])
    post = await channel.send(f"<@{USER_ID}> here", reference=ref, allowed_mentions=mentions)
    stored = fake.messages[post.id]
    assert stored.mentions == [USER_ID] and stored.message_reference is not None
    assert stored.message_reference["message_id"] == str(itx.original.id)


async def test_upload_over_10_mib_is_rejected(http_client: discord.Client, e: Env) -> None:
    """Exactly 10 MiB passes, one byte more gets 413 / 40005."""
    channel = http_client.get_partial_messageable(CHANNEL_ID)
    ok = await channel.send(file=discord.File(io.BytesIO(b"\0" * MAX_UPLOAD_BYTES), "max.bin"))
    assert e.fake.messages[ok.id].attachments[0].size == MAX_UPLOAD_BYTES
    too_big = discord.File(io.BytesIO(b"\0" * (MAX_UPLOAD_BYTES + 1)), "big.bin")
    with pytest.raises(discord.HTTPException) as info:
        await channel.send(file=too_big)
    assert info.value.status == 413 and info.value.code == 40005


async def test_bot_auth_required(e: Env, aio: aiohttp.ClientSession) -> None:
    """REST routes need `Authorization: Bot <token>`; otherwise a 401 JSON error."""
    url = e.fake.api_base + "/users/@me"
    for headers in ({}, {"Authorization": "Bot wrong"}, {"Authorization": TOKEN}):
        async with aio.get(url, headers=headers) as r:
            assert r.status == 401
            assert r.headers["Content-Type"] == "application/json"
            assert await r.json() == {"code": 0, "message": "401: Unauthorized"}
    async with aio.get(url, headers={"Authorization": f"Bot {TOKEN}"}) as r:
        assert r.status == 200 and (await r.json())["id"] == str(BOT_ID)
    client = discord.Client(intents=discord.Intents.none())
    try:
        with pytest.raises(discord.LoginFailure):
            await client.login("wrong-token")
    finally:
        await client.close()


async def test_http_only_client_posts_reply(http_client: discord.Client, e: Env) -> None:
    """An HTTP-only client posts a reply; references and mentions are stored."""
    fake = e.fake
    channel = await http_client.fetch_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel) and channel.guild.id == GUILD_ID
    first = await channel.send(f"hello <@{USER_ID}>")
    reply = await channel.send(
        "done!",
        reference=discord.MessageReference(message_id=first.id, channel_id=CHANNEL_ID),
        allowed_mentions=discord.AllowedMentions.none(),
    )
    assert reply.reference is not None and reply.reference.message_id == first.id
    stored = fake.messages[reply.id]
    assert stored.via == "bot" and stored.type == 19 and stored.mentions == []
    assert stored.message_reference is not None
    assert stored.message_reference["message_id"] == str(first.id)
    assert fake.messages[first.id].mentions == [USER_ID]
    assert [m.id for m in fake.channel_messages(CHANNEL_ID)][-2:] == [first.id, reply.id]
    with pytest.raises(discord.NotFound) as info:
        await http_client.get_partial_messageable(999).send("nowhere")
    assert info.value.code == 10003


async def test_injected_500_is_retried(http_client: discord.Client, e: Env) -> None:
    """An injected 500 is retried by discord.py and then succeeds."""
    fake = e.fake
    fake.inject("POST", rf"^/channels/{CHANNEL_ID}/messages$", 500)
    msg = await http_client.get_partial_messageable(CHANNEL_ID).send("after 500")
    path = f"/channels/{CHANNEL_ID}/messages"
    assert fake.requests[-2:] == [("POST", path, 500), ("POST", path, 200)]
    assert fake.messages[msg.id].content == "after 500"


async def test_injected_429_is_honoured(
    http_client: discord.Client, e: Env, aio: aiohttp.ClientSession
) -> None:
    """An injected 429 has Discord's headers and body and is waited out."""
    fake = e.fake
    fake.inject("GET", r"^/users/@me$", 429, retry_after=0.25)
    async with aio.get(
        fake.api_base + "/users/@me", headers={"Authorization": f"Bot {TOKEN}"}
    ) as r:
        assert r.status == 429 and r.headers["Via"] == "1.1 google"
        assert r.headers["Retry-After"] == "1" and r.headers["X-RateLimit-Remaining"] == "0"
        assert float(r.headers["X-RateLimit-Reset-After"]) == 0.25
        body = await r.json()
    assert body == {"message": "You are being rate limited.", "retry_after": 0.25, "global": False}
    fake.inject("POST", r"/messages$", 429, retry_after=0.1)
    msg = await http_client.get_partial_messageable(CHANNEL_ID).send("after 429")
    path = f"/channels/{CHANNEL_ID}/messages"
    assert fake.requests[-2:] == [("POST", path, 429), ("POST", path, 200)]
    assert fake.messages[msg.id].content == "after 429"


async def test_gateway_resume_after_disconnect(e: Env) -> None:
    """A dropped socket (4000) is RESUMEd and interactions flow again."""
    fake = e.fake
    session = next(s for s in fake.sessions if s.connected)
    await fake.disconnect_bots(code=4000)
    await fake.wait_for(lambda: session.resumes == 1 and session.connected)
    itx = await fake.invoke("echo", {"text": "back"})
    await itx.wait_response()
    assert itx.original is not None and itx.original.content == "back"


async def test_wait_for_timeout_message(e: Env) -> None:
    """wait_for's TimeoutError names the condition."""
    with pytest.raises(TimeoutError, match="never_true"):
        await e.fake.wait_for(lambda: "never_true" == "", timeout=0.05)


async def test_dm_invocation_uses_user_not_member(e: Env) -> None:
    """guild_id=None invokes in a DM: `user` instead of `member`."""
    itx = await e.fake.invoke("echo", {"text": "dm"}, guild_id=None, user_id=USER_ID)
    await itx.wait_response()
    assert "user" in itx.payload and "member" not in itx.payload
    assert ("member", False) in e.bot.events
    assert itx.original is not None and itx.original.guild_id is None


async def test_first_followup_after_defer_replaces_thinking(
    e: Env, aio: aiohttp.ClientSession
) -> None:
    """The first followup after a defer fills the thinking message."""
    itx = await e.fake.invoke("later")
    await itx.wait_response()
    hook = discord.Webhook.partial(APP_ID, itx.token, session=aio)
    first = await hook.send("result", wait=True)
    assert first.id == itx.original_id and itx.followups == []
    second = await hook.send("extra", wait=True)
    assert second.id != first.id and [m.id for m in itx.followups] == [second.id]


async def test_bot_sees_its_own_messages_on_the_gateway(
    http_client: discord.Client, e: Env
) -> None:
    """MESSAGE_CREATE reaches the bot for messages it posted."""
    waiter = asyncio.ensure_future(
        e.bot.wait_for("message", check=lambda m: m.content == "gateway echo", timeout=5)
    )
    sent = await http_client.get_partial_messageable(CHANNEL_ID).send("gateway echo")
    seen = await waiter
    assert seen.id == sent.id and seen.guild is not None and seen.guild.id == GUILD_ID


async def test_modal_round_trip(e: Env) -> None:
    """Type 9 opens a modal; submit_modal() reaches its on_submit."""
    itx = await e.fake.invoke("feedback", user_id=USER_ID)
    resp = await itx.wait_response()
    assert resp["type"] == 9 and resp["data"]["title"] == "Feedback"
    submit = await e.fake.submit_modal(
        resp["data"]["custom_id"], {"feedback_text": "more ponies"}, user_id=USER_ID
    )
    await submit.wait_response()
    assert ("modal", "more ponies") in e.bot.events
    assert submit.ephemeral and submit.original is not None
    assert submit.original.content == "thanks: more ponies"


async def test_message_context_menu_reaches_the_bot_with_the_target_message(
    e: Env, aio: aiohttp.ClientSession
) -> None:
    """A user's message with a picture; Apps → Inspect on it sends a type 2 interaction with
    data.type 3, target_id and the message in resolved.messages, as Discord does."""
    fake = e.fake
    picture = _png(5, 7)
    msg = fake.post_as_user(CHANNEL_ID, USER_ID, "look", files=[("pony.png", picture)])

    itx = await fake.invoke_on_message("Inspect", msg.id, user_id=OWNER_ID)
    await itx.wait_response()

    data = itx.payload["data"]
    assert (data["type"], data["target_id"]) == (3, str(msg.id))
    [(_, message_id, author_id, content, attachments)] = [
        ev for ev in e.bot.events if ev[0] == "inspect"]
    assert (message_id, author_id, content) == (msg.id, USER_ID, "look")
    [(filename, content_type, width, height, url)] = attachments
    assert (filename, content_type, width, height) == ("pony.png", "image/png", 5, 7)
    async with aio.get(url) as r:
        assert await r.read() == picture
    assert itx.ephemeral and itx.original.content == f"inspected {msg.id}"


async def test_message_commands_are_offered_only_where_discord_offers_them(e: Env) -> None:
    fake = e.fake
    msg = fake.post_as_user(CHANNEL_ID, USER_ID, "hi")
    with pytest.raises(ValueError, match="no message command 'echo'"):
        await fake.invoke_on_message("echo", msg.id)  # a slash command is not in the menu
    with pytest.raises(ValueError, match="not synced"):
        await fake.invoke("Inspect")  # nor is a message command a slash command
    ephemeral = await fake.invoke("echo", {"text": "psst", "ephemeral": True})
    await ephemeral.wait_response()
    with pytest.raises(ValueError, match="ephemeral"):
        await fake.invoke_on_message("Inspect", ephemeral.original_id)
    fake.messages[msg.id].deleted = True
    with pytest.raises(ValueError, match="no message"):
        await fake.invoke_on_message("Inspect", msg.id)


@pytest.mark.parametrize("extra", [{"description": "what it does"},
                                   {"options": [{"type": 3, "name": "x", "description": "x"}]}])
async def test_a_context_menu_with_a_description_or_options_is_refused(
    e: Env, aio: aiohttp.ClientSession, extra: dict[str, Any]
) -> None:
    before = list(e.fake.global_commands)
    async with aio.post(f"{e.fake.api_base}/applications/{APP_ID}/commands",
                        json={"name": "Menu", "type": 3, **extra},
                        headers={"Authorization": f"Bot {TOKEN}"}) as r:
        assert r.status == 400 and (await r.json())["code"] == 50035
    assert e.fake.global_commands == before


async def test_raw_gateway_protocol(e: Env, aio: aiohttp.ClientSession) -> None:
    """Opcode-level checks with a bare websocket (plain text frames, no compression)."""
    fake = e.fake
    url = fake.gateway_url + "?v=10&encoding=json"
    async with aio.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=5))["op"] == 10  # HELLO
        await ws.send_json({"op": 1, "d": None})
        assert (await ws.receive_json(timeout=5))["op"] == 11  # HEARTBEAT_ACK
        await ws.send_json({"op": 2, "d": {"token": TOKEN, "intents": 1, "properties": {}}})
        ready = await ws.receive_json(timeout=5)
        assert ready["t"] == "READY" and ready["s"] == 1
        assert ready["d"]["resume_gateway_url"] == fake.gateway_url
        guild = await ws.receive_json(timeout=5)
        assert guild["t"] == "GUILD_CREATE" and guild["s"] == 2
        nsfw = {c["id"]: c["nsfw"] for c in guild["d"]["channels"]}
        assert nsfw == {str(CHANNEL_ID): False, str(NSFW_CHANNEL_ID): True}
        # Events go to every live session: this socket and the real bot both get it.
        itx = await fake.invoke("echo", {"text": "both"})
        event = await ws.receive_json(timeout=5)
        assert event["t"] == "INTERACTION_CREATE" and event["d"]["id"] == str(itx.id)
        await itx.wait_response()
    async with aio.ws_connect(url) as ws:
        await ws.receive_json(timeout=5)
        await ws.send_json({"op": 2, "d": {"token": "wrong", "properties": {}}})
        closed = await ws.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 4004
    async with aio.ws_connect(url) as ws:
        await ws.receive_json(timeout=5)
        await ws.send_json({"op": 6, "d": {"token": TOKEN, "session_id": "nope", "seq": 3}})
        assert await ws.receive_json(timeout=5) == {"op": 9, "d": False, "s": None, "t": None}
