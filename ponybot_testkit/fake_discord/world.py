"""The fake Discord's world: the guilds the bot is in, their channels, users and DM channels.

Tests build it with ``add_guild`` / ``add_channel`` / ``add_user`` before or after the bot
connects; a connected bot hears about additions as GUILD_CREATE / CHANNEL_CREATE /
CHANNEL_UPDATE, like a bot added to a server, and about ``remove_guild`` / ``remove_channel`` /
``remove_thread`` as GUILD_DELETE (the bot was removed, not an outage) / CHANNEL_DELETE /
THREAD_DELETE. (Not to be confused with
``ponybot_testkit.world``, the ids and config the whole test suite shares.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponybot_testkit.fake_discord.clock import FakeClock, _Snowflakes
from ponybot_testkit.fake_discord.gateway import INTENT_GUILDS
from ponybot_testkit.fake_discord.model import _Channel, _Guild
from ponybot_testkit.fake_discord.rules import DEFAULT_PERMISSIONS

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class WorldSetup(FakeParts):
    """Guilds, channels and users; announces changes with ``_broadcast`` (``gateway``)."""

    owner_id: int
    clock: FakeClock
    guilds: dict[int, _Guild]
    channels: dict[int, _Channel]
    users: dict[int, dict[str, Any]]
    _snowflakes: _Snowflakes

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

    def remove_guild(self, guild_id: int) -> None:
        """The bot leaves (is kicked from) a guild: it and its channels are gone, and
        connected bots get GUILD_DELETE without ``unavailable`` (an outage would set it)."""
        gid = int(guild_id)
        if self.guilds.pop(gid, None) is None:
            raise ValueError(f"unknown guild {gid}")
        for cid in [c.id for c in self.channels.values() if c.guild_id == gid]:
            del self.channels[cid]
        self._broadcast("GUILD_DELETE", {"id": str(gid)}, INTENT_GUILDS)

    def remove_channel(self, channel_id: int) -> None:
        """A guild channel is deleted; connected bots get CHANNEL_DELETE."""
        ch = self.channels.pop(int(channel_id), None)
        if ch is None or ch.guild_id is None:
            raise ValueError(f"unknown guild channel {channel_id}")
        self._broadcast("CHANNEL_DELETE", self._channel_json(ch), INTENT_GUILDS)

    def remove_thread(self, guild_id: int, thread_id: int, parent_id: int) -> None:
        """A thread is deleted; connected bots get THREAD_DELETE. (The fake keeps no threads:
        the event carries what Discord's does, ids and the public-thread type.)"""
        if int(guild_id) not in self.guilds:
            raise ValueError(f"unknown guild {guild_id}")
        self._broadcast("THREAD_DELETE", {"id": str(int(thread_id)), "guild_id": str(int(guild_id)),
                                          "parent_id": str(int(parent_id)), "type": 11},
                        INTENT_GUILDS)

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

    def _user(self, user_id: int) -> dict[str, Any]:
        if user_id not in self.users:
            self.add_user(user_id)
        return self.users[user_id]
