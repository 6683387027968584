"""Message logic shared by every route that posts, edits or deletes a message.

Channel posts, interaction responses and webhook followups all create messages through
``_create_message`` and change them through ``_edit_message`` / ``_delete_message``, so the
same rules hold for each: limits checked, ``attachment://`` embed images resolved, mentions
filtered by ``allowed_mentions``, replies checked, and the bot told by gateway event unless
the message is ephemeral.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ponybot_testkit.fake_discord.attachments import _apply_attachment_meta
from ponybot_testkit.fake_discord.gateway import INTENT_DIRECT_MESSAGES, INTENT_GUILD_MESSAGES
from ponybot_testkit.fake_discord.model import FakeMessage, _png_size
from ponybot_testkit.fake_discord.rules import (
    _SETTABLE_FLAGS,
    EPHEMERAL,
    LOADING,
    _ApiError,
    _form_error,
    _validate_message,
)

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import FakeClock, _Snowflakes
    from ponybot_testkit.fake_discord.model import (
        FakeAttachment,
        FakeInteraction,
        _Channel,
        _Upload,
    )
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class MessageLogic(FakeParts):
    """Create / edit / delete; uses ``_make_attachment`` (``attachments``) and
    ``_emit_message`` / ``_broadcast`` (``gateway``)."""

    bot_user_id: int
    application_id: int
    clock: FakeClock
    channels: dict[int, _Channel]
    messages: dict[int, FakeMessage]
    _snowflakes: _Snowflakes

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
        _validate_message(payload, partial=False)
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
        _validate_message(payload, partial=True)
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
