"""Discord's JSON for what the fake stores: users, roles, members, channels, guilds, messages.

One place builds each shape, so a message looks the same in a REST reply, a
MESSAGE_CREATE event and an interaction's ``message`` field. Field sets follow what
discord.py 2.7 reads; values are the plain defaults of a small guild.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponybot_testkit.fake_discord.clock import FakeClock, _iso

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.model import (
        FakeInteraction,
        FakeMessage,
        _Channel,
        _Guild,
    )
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class JsonShapes(FakeParts):
    """``_*_json`` builders; ``_user`` (from ``world``) creates users it is asked about."""

    bot_user_id: int
    bot_name: str
    application_id: int
    clock: FakeClock
    users: dict[int, dict[str, Any]]
    channels: dict[int, _Channel]
    messages: dict[int, FakeMessage]
    interactions: dict[int, FakeInteraction]

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
            "author": (self._bot_user_json() if m.author_id == self.bot_user_id
                       else self._user(m.author_id)),
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
