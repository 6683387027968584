"""Discord's rules as the fake enforces them: limits, flags, type numbers and error shapes.

The package docstring lists every enforced rule with its status and JSON error code; the
numbers behind those rules live here, with ``_ApiError`` (raised by any handler, answered
as Discord's JSON error) and the validators for messages and command definitions, so that a
limit is written down once and read by every route that needs it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

API_PREFIX = "/api/v10"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Discord's cap on a whole message request (files and JSON together), as discord.js utilities
# record it (MessageLimits.MaximumRequestSize); bigger bodies get 413 / 40005.
MAX_REQUEST_BYTES = 25_000_000
# How long Discord remembers a nonce for `enforce_nonce` ("the past few minutes").
NONCE_WINDOW_S = 5 * 60
ACK_WINDOW_S = 3.0
TOKEN_LIFETIME_S = 15 * 60

# Message flags
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_COMPONENTS_V2 = 1 << 15
_SETTABLE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2

# Interaction types
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5

# @everyone's permissions in a new guild (roughly): view, send, embed, attach, history,
# reactions, external emoji, app commands, threads. Never ADMINISTRATOR.
DEFAULT_PERMISSIONS = (
    (1 << 0)  # CREATE_INSTANT_INVITE
    | (1 << 6)  # ADD_REACTIONS
    | (1 << 10)  # VIEW_CHANNEL
    | (1 << 11)  # SEND_MESSAGES
    | (1 << 14)  # EMBED_LINKS
    | (1 << 15)  # ATTACH_FILES
    | (1 << 16)  # READ_MESSAGE_HISTORY
    | (1 << 18)  # USE_EXTERNAL_EMOJIS
    | (1 << 26)  # CHANGE_NICKNAME
    | (1 << 31)  # USE_APPLICATION_COMMANDS
    | (1 << 38)  # SEND_MESSAGES_IN_THREADS
)

_OPTION_TYPES = {
    1: "SUB_COMMAND",
    2: "SUB_COMMAND_GROUP",
    3: "STRING",
    4: "INTEGER",
    5: "BOOLEAN",
    6: "USER",
    7: "CHANNEL",
    8: "ROLE",
    9: "MENTIONABLE",
    10: "NUMBER",
    11: "ATTACHMENT",
}
_SELECT_TYPES = {3, 5, 6, 7, 8}


class _ApiError(Exception):
    """Raised inside handlers; becomes a Discord-shaped JSON error response."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return _json_response(body, status=self.status)


def _json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # discord.py only parses JSON when Content-Type is *exactly* application/json, so never
    # let aiohttp append "; charset=utf-8" (it would with text=...).
    hdrs = {"Content-Type": "application/json"}
    if headers:
        hdrs.update(headers)
    return web.Response(body=json.dumps(data).encode(), status=status, headers=hdrs)


def _form_error(field_name: str, code: str, message: str) -> _ApiError:
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_name.split(".")):
        errors = {part: errors}
    return _ApiError(400, 50035, "Invalid Form Body", errors)


UNAUTHORIZED = (401, 0, "401: Unauthorized")


def _validate_message(payload: dict[str, Any], *, partial: bool) -> None:
    content = payload.get("content")
    if content is not None and len(str(content)) > 2000:
        raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
    embeds = payload.get("embeds")
    if embeds:
        if len(embeds) > 10:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        total = 0
        for i, e in enumerate(embeds):
            for key, limit in (("title", 256), ("description", 4096)):
                if len(e.get(key) or "") > limit:
                    raise _form_error(
                        f"embeds.{i}.{key}",
                        "BASE_TYPE_MAX_LENGTH",
                        f"Must be {limit} or fewer in length.",
                    )
                total += len(e.get(key) or "")
            fields = e.get("fields") or []
            if len(fields) > 25:
                raise _form_error(
                    f"embeds.{i}.fields",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 25 or fewer in length.",
                )
            for f in fields:
                total += len(f.get("name") or "") + len(f.get("value") or "")
            total += len((e.get("footer") or {}).get("text") or "")
            total += len((e.get("author") or {}).get("name") or "")
        if total > 6000:
            raise _form_error(
                "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
            )


_NAME_RE = re.compile(r"^[-_'\w]{1,32}$")


def _check_name(name: str, where: str) -> None:
    if not _NAME_RE.match(name) or name != name.lower():
        raise _form_error(
            where, "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}"
        )


def _check_options(options: list[dict[str, Any]], where: str, depth: int) -> None:
    if len(options) > 25:
        raise _form_error(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    names: set[str] = set()
    for i, o in enumerate(options):
        here = f"{where}.{i}"
        _check_name(o.get("name") or "", f"{here}.name")
        if o["name"] in names:
            raise _form_error(
                f"{here}.name", "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "dup"
            )
        names.add(o["name"])
        desc = o.get("description") or ""
        if not 1 <= len(desc) <= 100:
            raise _form_error(
                f"{here}.description",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if o.get("type") not in _OPTION_TYPES:
            raise _form_error(f"{here}.type", "BASE_TYPE_CHOICES", "Value must be one of ...")
        if o.get("required"):
            if seen_optional:
                raise _form_error(
                    f"{here}.required",
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        if len(o.get("choices") or []) > 25:
            raise _form_error(
                f"{here}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        if o.get("type") in (1, 2):
            if depth >= 2 or (o["type"] == 2 and depth >= 1):
                raise _form_error(
                    f"{here}.type", "APPLICATION_COMMAND_OPTION_TYPE_INVALID", "nesting"
                )
            _check_options(o.get("options") or [], f"{here}.options", depth + 1)
