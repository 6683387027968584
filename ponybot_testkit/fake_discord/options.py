"""Slash-command options the way Discord's client sends them, from a test's plain values.

``fake.invoke("pony", {"prompt": "a pony", "count": 2})`` finds the synced command (and
subcommand path), converts each value to the option's type (users, channels, roles and
attachments go into ``resolved``) and refuses what Discord's client would never send:
unknown or missing required options, values outside ``choices`` / ``min_*`` / ``max_*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponybot_testkit.fake_discord.model import _Upload
from ponybot_testkit.fake_discord.rules import DEFAULT_PERMISSIONS

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.model import _Channel, _Guild
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class CommandOptions(FakeParts):
    """Command lookup and option building for ``invoke`` / ``autocomplete``.

    Uses ``_user`` (``world``), the JSON shapes and ``_make_attachment`` (``attachments``).
    """

    guilds: dict[int, _Guild]
    channels: dict[int, _Channel]
    users: dict[int, dict[str, Any]]
    global_commands: list[dict[str, Any]]
    guild_commands: dict[int, list[dict[str, Any]]]

    def _find_command(self, name: str, guild_id: int | None) -> tuple[dict[str, Any], list[str]]:
        parts = name.split()
        if not parts:
            raise ValueError("empty command name")
        pools: list[list[dict[str, Any]]] = []
        if guild_id is not None:
            pools.append(self.guild_commands.get(guild_id, []))
        pools.append(self.global_commands)
        for pool in pools:
            for cmd in pool:
                if cmd["name"] == parts[0] and cmd.get("type", 1) == 1:
                    return cmd, parts[1:]
        known = sorted({c["name"] for p in pools for c in p})
        raise ValueError(f"command {parts[0]!r} is not synced for this context; synced: {known}")

    def _build_options(
        self,
        cmd: dict[str, Any],
        path: list[str],
        values: dict[str, Any],
        ctx: dict,
        focused: str | None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        defs: list[dict[str, Any]] = cmd.get("options") or []
        wrappers: list[dict[str, Any]] = []
        for part in path:
            sub = next(
                (o for o in defs if o["name"] == part and o["type"] in (1, 2)),
                None,
            )
            if sub is None:
                raise ValueError(f"{cmd['name']!r} has no subcommand/group {part!r}")
            wrappers.append({"type": sub["type"], "name": sub["name"]})
            defs = sub.get("options") or []
        if any(o["type"] in (1, 2) for o in defs):
            subs = [o["name"] for o in defs if o["type"] in (1, 2)]
            raise ValueError(f"{cmd['name']!r} needs a subcommand, one of {subs}")
        resolved: dict[str, dict[str, Any]] = {}
        by_name = {o["name"]: o for o in defs}
        for key in values:
            if key not in by_name:
                raise ValueError(f"unknown option {key!r}; options are {sorted(by_name)}")
        if focused is not None and focused not in values:
            raise ValueError(f"focused option {focused!r} needs a (partial) value")
        leaf: list[dict[str, Any]] = []
        for o in defs:
            name = o["name"]
            if name not in values:
                if o.get("required") and focused is None and ctx.get("validate", True):
                    raise ValueError(f"missing required option {name!r}")
                continue
            if name == focused:
                leaf.append(
                    {"name": name, "type": o["type"], "value": str(values[name]), "focused": True}
                )
                continue
            value = self._convert_option(o, values[name], ctx, resolved)
            leaf.append({"name": name, "type": o["type"], "value": value})
        opts = leaf
        for w in reversed(wrappers):
            w["options"] = opts
            opts = [w]
        return opts, resolved

    def _convert_option(
        self, o: dict[str, Any], value: Any, ctx: dict, resolved: dict[str, dict[str, Any]]
    ) -> Any:
        t, name = o["type"], o["name"]
        strict = ctx.get("validate", True)
        if t == 3:
            if not isinstance(value, str):
                raise ValueError(f"option {name!r} is a string, got {value!r}")
            lo, hi = o.get("min_length", 0), o.get("max_length", 6000)
            if strict and not lo <= len(value) <= hi:
                raise ValueError(f"option {name!r}: length {len(value)} not in [{lo}, {hi}]")
            out: Any = value
        elif t == 4:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"option {name!r} is an integer, got {value!r}")
            if strict and abs(value) > 2**53:
                raise ValueError(f"option {name!r}: Discord integers are within +-2**53")
            out = value
        elif t == 10:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"option {name!r} is a number, got {value!r}")
            out = value
        elif t == 5:
            if not isinstance(value, bool):
                raise ValueError(f"option {name!r} is a boolean, got {value!r}")
            out = value
        elif t in (6, 9) and (t == 6 or int(value) in self.users):
            uid = int(value)
            resolved.setdefault("users", {})[str(uid)] = self._user(uid)
            if ctx["guild_id"] is not None:
                resolved.setdefault("members", {})[str(uid)] = self._member_json(
                    uid, 0, with_user=False
                )
            out = str(uid)
        elif t in (8, 9):
            rid = int(value)
            gid = ctx["guild_id"]
            if gid is None or rid != gid:
                raise ValueError(f"option {name!r}: only the @everyone role ({gid}) exists")
            resolved.setdefault("roles", {})[str(rid)] = self._role_json(self.guilds[gid])
            out = str(rid)
        elif t == 7:
            cid = int(value)
            ch = self.channels.get(cid)
            if ch is None:
                raise ValueError(f"option {name!r}: unknown channel {cid}")
            chj = self._channel_json(ch)
            chj["permissions"] = str(DEFAULT_PERMISSIONS)
            resolved.setdefault("channels", {})[str(cid)] = chj
            out = str(cid)
        elif t == 11:
            if not isinstance(value, tuple) or len(value) not in (2, 3):
                raise ValueError(f"option {name!r}: give (filename, bytes[, content_type])")
            fname, data = value[0], bytes(value[1])
            ctype = value[2] if len(value) == 3 else None
            att = self._make_attachment(
                ctx["channel_id"], _Upload(0, fname, ctype, data), ephemeral=True
            )
            resolved.setdefault("attachments", {})[str(att.id)] = att.to_json()
            out = str(att.id)
        else:
            raise ValueError(f"option {name!r}: unsupported type {t}")
        choices = o.get("choices")
        if not strict:
            return out
        if choices and out not in [c["value"] for c in choices]:
            allowed = [c["value"] for c in choices]
            raise ValueError(f"option {name!r}: {out!r} is not one of the choices {allowed}")
        if t in (4, 10):
            if "min_value" in o and out < o["min_value"]:
                raise ValueError(f"option {name!r}: {out} < min_value {o['min_value']}")
            if "max_value" in o and out > o["max_value"]:
                raise ValueError(f"option {name!r}: {out} > max_value {o['max_value']}")
        return out
