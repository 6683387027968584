"""Message context menus (Apps → <command> on a message), and the user messages they are used
on: ``post_as_user`` puts a message with attachments in a channel as a user wrote it, and
``invoke_on_message`` sends the type 2 interaction Discord sends for a message command (type 3):
``data.type`` 3, ``target_id`` and the message in ``resolved.messages``.

Discord's rules, enforced: only a command synced as a message command (type 3) is in the
menu (a slash or user command of the same name is not), guild commands only in their guild and
never in DMs, no menu on a deleted or an ephemeral message, and the interaction comes from the
message's own channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponybot_testkit.fake_discord.model import FakeInteraction, FakeMessage, _Upload
from ponybot_testkit.fake_discord.rules import APPLICATION_COMMAND

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import FakeClock, _Snowflakes
    from ponybot_testkit.fake_discord.model import FakeAttachment, _Channel
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)

MESSAGE_COMMAND = 3


class MessageCommands(FakeParts):
    """``post_as_user`` and ``invoke_on_message``. Uses ``_make_attachment``
    (``attachments``), ``_context`` / ``_send_interaction`` (``interactions``), the JSON
    shapes and ``_emit_message`` (``gateway``)."""

    clock: FakeClock
    channels: dict[int, _Channel]
    messages: dict[int, FakeMessage]
    global_commands: list[dict[str, Any]]
    guild_commands: dict[int, list[dict[str, Any]]]
    _snowflakes: _Snowflakes

    def post_as_user(self, channel_id: int, user_id: int, content: str = "",
                     files: list[tuple[Any, ...]] | None = None) -> FakeMessage:
        """A message ``user_id`` wrote in ``channel_id``, with ``files`` as
        ``(filename, bytes[, content_type])`` attachments (typed and measured as Discord does:
        the type from the name, width and height from the picture)."""
        ch = self.channels.get(int(channel_id))
        if ch is None:
            raise ValueError(f"unknown channel {channel_id}; add_channel first")
        self._user(int(user_id))
        uploads = [_Upload(i, f[0], f[2] if len(f) > 2 else None, bytes(f[1]))
                   for i, f in enumerate(files or [])]
        if not content and not uploads:
            raise ValueError("Discord refuses an empty message")
        attachments: list[FakeAttachment] = [
            self._make_attachment(ch.id, up, ephemeral=False) for up in uploads]
        msg = FakeMessage(id=self._snowflakes.next(), channel_id=ch.id, guild_id=ch.guild_id,
                          author_id=int(user_id), via="user", content=content,
                          attachments=attachments, created_at=self.clock.time())
        self.messages[msg.id] = msg
        ch.last_message_id = msg.id
        self._emit_message("MESSAGE_CREATE", msg)
        return msg

    async def invoke_on_message(
        self,
        name: str,
        message_id: int,
        *,
        user_id: int | None = None,
        permissions: int = 0,
        app_permissions: int | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Use the message command ``name`` on message ``message_id`` (without waiting)."""
        msg = self.messages.get(int(message_id))
        if msg is None or msg.deleted:
            raise ValueError(f"no message {message_id}")
        if msg.ephemeral:
            raise ValueError("Discord shows no Apps menu on an ephemeral message")
        ctx = self._context(msg.guild_id, msg.channel_id, user_id)
        cmd = self._find_message_command(name, ctx["guild_id"])
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": MESSAGE_COMMAND,
            "target_id": str(msg.id),
            "resolved": {"messages": {str(msg.id): self._message_json(msg)}},
        }
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return self._send_interaction(APPLICATION_COMMAND, data, ctx, name=name,
                                      permissions=permissions, app_permissions=app_permissions,
                                      locale=locale)

    def _find_message_command(self, name: str, guild_id: int | None) -> dict[str, Any]:
        pools = ([self.guild_commands.get(guild_id, [])] if guild_id is not None else [])
        pools.append(self.global_commands)
        for pool in pools:
            for cmd in pool:
                if cmd["name"] == name and cmd.get("type", 1) == MESSAGE_COMMAND:
                    return cmd
        known = sorted(c["name"] for p in pools for c in p if c.get("type") == MESSAGE_COMMAND)
        raise ValueError(f"no message command {name!r} is synced for this context; "
                         f"message commands: {known}")
