"""What the fake Discord stores: messages, attachments, interactions, guilds and channels.

Tests read these objects to check what the bot did (``fake.messages[id].embeds``,
``itx.original``, ``msg.attachment("pony.png").data``); the route handlers create and change
them. ``FakeInteraction`` also records every callback attempt and lets a test wait for the
accepted one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ponybot_testkit.fake_discord.rules import EPHEMERAL

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.parts import FakeParts


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Discord reports width/height for images; PNG is what the bot uploads.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height as Discord reports them for a picture it can read: a PNG's as its
    header declares them (however many pixels that is), JPEG's and WebP's from theirs;
    None for anything else."""
    dims = _png_size(data)
    if dims is not None:
        return dims
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "WEBP", "GIF"]) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


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
    # What the CDN serves instead of `data`, when a test wants other bytes downloaded than
    # Discord measured (a cache or proxy gone wrong): what the metadata says stays `data`'s.
    served: bytes | None = None

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
        dims = _image_size(self.data)
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
        fake: FakeParts,
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
        # The `shard` ([id, count], None when unsharded) of each gateway session it was sent to.
        self.delivered_to: list[list[int] | None] = []
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
