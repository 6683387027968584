"""Application command sync: what ``bot.tree.sync()`` PUTs, checked like Discord checks it.

Names, descriptions, option counts, option order (required first) and nesting are
validated (``rules._check_options``); user and message commands (types 2 and 3, context menus)
may have no description or options; each command keeps its id across syncs, and every
sync is recorded in ``fake.command_syncs`` for tests to wait on.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ponybot_testkit.fake_discord.rules import (
    _ApiError,
    _check_name,
    _check_options,
    _form_error,
    _json_response,
)

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import _Snowflakes
    from ponybot_testkit.fake_discord.model import _Guild
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class CommandRoutes(FakeParts):
    """Handlers for ``/applications/{id}[/guilds/{id}]/commands``."""

    application_id: int
    guilds: dict[int, _Guild]
    global_commands: list[dict[str, Any]]
    guild_commands: dict[int, list[dict[str, Any]]]
    command_syncs: list[tuple[int | None, list[dict[str, Any]]]]
    _command_ids: dict[tuple[int | None, int, str], int]
    _snowflakes: _Snowflakes

    def _commands_for(self, app_id: str, guild_id: str | None) -> list[dict[str, Any]]:
        if int(app_id) != self.application_id:
            raise _ApiError(403, 50001, "Missing Access")
        if guild_id is None:
            return self.global_commands
        gid = int(guild_id)
        if gid not in self.guilds:
            raise _ApiError(403, 50001, "Missing Access")
        return self.guild_commands.setdefault(gid, [])

    async def _get_commands(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response:
        return _json_response(self._commands_for(app_id, guild_id))

    async def _put_commands(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response:
        self._commands_for(app_id, guild_id)
        raw = await request.read()
        try:
            payload = json.loads(raw or b"[]")
        except ValueError:
            raise _ApiError(400, 50109, "The request body contains invalid JSON.") from None
        if not isinstance(payload, list):
            raise _form_error("_root", "LIST_TYPE_CONVERT", "Must be a list.")
        gid = int(guild_id) if guild_id else None
        out = [self._store_command(c, gid, i) for i, c in enumerate(payload)]
        names = [(c.get("type", 1), c["name"]) for c in out]
        if len(set(names)) != len(names):
            raise _form_error("_root", "APPLICATION_COMMANDS_DUPLICATE_NAME", "duplicate name")
        if gid is None:
            self.global_commands = out
        else:
            self.guild_commands[gid] = out
        self.command_syncs.append((gid, out))
        return _json_response(out)

    async def _post_command(
        self, request: web.Request, app_id: str, guild_id: str | None = None
    ) -> web.Response:
        cmds = self._commands_for(app_id, guild_id)
        payload, _ = await self._read_body(request)
        gid = int(guild_id) if guild_id else None
        cmd = self._store_command(payload, gid, 0)
        cmds[:] = [c for c in cmds if (c.get("type", 1), c["name"]) != (cmd["type"], cmd["name"])]
        cmds.append(cmd)
        self.command_syncs.append((gid, list(cmds)))
        return _json_response(cmd, status=201)

    def _store_command(self, c: dict[str, Any], gid: int | None, index: int) -> dict[str, Any]:
        ctype = int(c.get("type", 1))
        name = c.get("name") or ""
        where = f"{index}"
        if ctype == 1:
            _check_name(name, f"{where}.name")
            desc = c.get("description") or ""
            if not 1 <= len(desc) <= 100:
                raise _form_error(
                    f"{where}.description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            _check_options(c.get("options") or [], f"{where}.options", depth=0)
        elif ctype not in (2, 3):
            raise _form_error(f"{where}.type", "BASE_TYPE_CHOICES", "Value must be one of 1, 2, 3")
        elif not 1 <= len(name) <= 32:
            raise _form_error(
                f"{where}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."
            )
        elif c.get("description"):
            # User and message commands (context menus) have no description...
            raise _form_error(f"{where}.description", "APPLICATION_COMMAND_INVALID_DESCRIPTION",
                              "Context menu commands cannot have description")
        elif c.get("options"):
            # ...and no options: Discord gives them their target instead.
            raise _form_error(f"{where}.options", "APPLICATION_COMMAND_OPTIONS_INVALID",
                              "Context menu commands cannot have options")
        key = (gid, ctype, name)
        if key not in self._command_ids:
            self._command_ids[key] = self._snowflakes.next()
        out = {
            "id": str(self._command_ids[key]),
            "application_id": str(self.application_id),
            "version": str(self._snowflakes.next()),
            "default_member_permissions": c.get("default_member_permissions"),
            "type": ctype,
            "name": name,
            "name_localizations": c.get("name_localizations"),
            "description": c.get("description") or "",
            "description_localizations": c.get("description_localizations"),
            "nsfw": bool(c.get("nsfw", False)),
            "contexts": c.get("contexts"),
            "integration_types": c.get("integration_types") or [0],
        }
        if c.get("options"):
            out["options"] = c["options"]
        if gid is not None:
            out["guild_id"] = str(gid)
        else:
            out["dm_permission"] = c.get("dm_permission", True)
        return out
