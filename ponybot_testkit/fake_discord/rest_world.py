"""REST reads of who and where: the gateway URL, the bot user and its application, other
users and DM channels, guilds, their channels and members.

Mostly what discord.py asks for while logging in (``/users/@me``,
``/oauth2/applications/@me``) and what the bot fetches when its cache lacks something.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ponybot_testkit.fake_discord.gateway import GUILDS_PER_SHARD
from ponybot_testkit.fake_discord.rules import _ApiError, _json_response

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.model import _Channel, _Guild
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class WorldRoutes(FakeParts):
    """Handlers for ``/gateway``, ``/users``, ``/applications/@me`` and ``/guilds``."""

    bot_user_id: int
    owner_id: int
    application_id: int
    app_name: str
    guilds: dict[int, _Guild]
    channels: dict[int, _Channel]
    users: dict[int, dict[str, Any]]
    recommended_shards: int | None

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        shards = self.recommended_shards or max(1, -(-len(self.guilds) // GUILDS_PER_SHARD))
        return _json_response(
            {
                "url": self.gateway_url,
                "shards": shards,
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
