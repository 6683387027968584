"""What a Discord user sends: slash commands, autocomplete, button clicks and modal submits.

Each call builds the INTERACTION_CREATE payload Discord would (member or DM user, channel,
permissions, locale, the clicked message) and broadcasts it to the connected bot; the
returned ``FakeInteraction`` records what the bot answered. Option values are converted and
checked against the synced command definition by ``options``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ponybot_testkit.fake_discord.model import FakeInteraction, FakeMessage, _Channel
from ponybot_testkit.fake_discord.rules import (
    _SELECT_TYPES,
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MAX_UPLOAD_BYTES,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
)

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import _Snowflakes
    from ponybot_testkit.fake_discord.model import _Guild
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class Interactions(FakeParts):
    """``invoke``, ``autocomplete``, ``click``, ``submit_modal``.

    Relies on ``_find_command`` / ``_build_options`` (``options``), ``_user`` and
    ``dm_channel_id`` (``world``), the JSON shapes, and ``_broadcast`` (``gateway``).
    """

    owner_id: int
    application_id: int
    guilds: dict[int, _Guild]
    channels: dict[int, _Channel]
    messages: dict[int, FakeMessage]
    interactions: dict[int, FakeInteraction]
    _by_token: dict[str, FakeInteraction]
    _snowflakes: _Snowflakes

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
        itx.delivered_to = [s.shard for s in self._broadcast("INTERACTION_CREATE", payload)]
        return itx


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
