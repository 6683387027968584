"""The fake's HTTP front door: the route table, bot-token auth, injected faults and bodies.

Every REST endpoint the fake serves is listed once in ``_build_routes``. ``_handle`` sends
the websocket upgrade to the gateway and ``/attachments/...`` to the CDN, answers injected
faults before routing, records each request in ``fake.requests``, and turns ``_ApiError``
into Discord's JSON error; a bug in the fake becomes a fast 400, kept in ``fake.errors``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from ponybot_testkit.fake_discord.model import _Upload
from ponybot_testkit.fake_discord.rules import (
    API_PREFIX,
    MAX_UPLOAD_BYTES,
    UNAUTHORIZED,
    _ApiError,
    _json_response,
)

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.faults import Injection
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Any]
    auth: bool


class Routing(FakeParts):
    """Dispatches requests to the handlers of the ``rest_*``, ``callback`` and ``webhooks``
    modules, the gateway (``_gateway``) and the CDN (``_cdn``)."""

    bot_token: str
    max_request_bytes: int
    requests: list[tuple[str, str, int]]
    errors: list[BaseException]
    injections: list[Injection]
    _routes: list[_Route]

    def _build_routes(self) -> None:
        snow = r"(\d+)"
        tok = r"([^/]+)"
        table: list[tuple[str, str, Callable[..., Any], bool]] = [
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("GET", "/users/@me", self._get_me, True),
            ("GET", f"/users/{snow}", self._get_user, True),
            ("POST", "/users/@me/channels", self._create_dm, True),
            ("GET", "/oauth2/applications/@me", self._get_app, True),
            ("GET", "/applications/@me", self._get_app, True),
            ("GET", f"/applications/{snow}/commands", self._get_commands, True),
            ("PUT", f"/applications/{snow}/commands", self._put_commands, True),
            ("POST", f"/applications/{snow}/commands", self._post_command, True),
            ("GET", f"/applications/{snow}/guilds/{snow}/commands", self._get_commands, True),
            ("PUT", f"/applications/{snow}/guilds/{snow}/commands", self._put_commands, True),
            ("POST", f"/applications/{snow}/guilds/{snow}/commands", self._post_command, True),
            ("GET", f"/guilds/{snow}", self._get_guild, True),
            ("GET", f"/guilds/{snow}/channels", self._get_guild_channels, True),
            ("GET", f"/guilds/{snow}/members/{snow}", self._get_member, True),
            ("GET", f"/channels/{snow}", self._get_channel, True),
            ("POST", f"/channels/{snow}/typing", self._typing, True),
            ("GET", f"/channels/{snow}/messages", self._list_messages, True),
            ("POST", f"/channels/{snow}/messages", self._post_channel_message, True),
            ("GET", f"/channels/{snow}/messages/{snow}", self._get_channel_message, True),
            ("PATCH", f"/channels/{snow}/messages/{snow}", self._patch_channel_message, True),
            ("DELETE", f"/channels/{snow}/messages/{snow}", self._delete_channel_message, True),
            ("POST", f"/interactions/{snow}/{tok}/callback", self._callback, False),
            ("POST", f"/webhooks/{snow}/{tok}", self._webhook_post, False),
            ("GET", f"/webhooks/{snow}/{tok}/messages/{tok}", self._webhook_get, False),
            ("PATCH", f"/webhooks/{snow}/{tok}/messages/{tok}", self._webhook_patch, False),
            ("DELETE", f"/webhooks/{snow}/{tok}/messages/{tok}", self._webhook_delete, False),
        ]
        for method, pattern, handler, auth in table:
            self._routes.append(_Route(method, re.compile(f"^{pattern}$"), handler, auth))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._gateway(request)
        if path.startswith("/attachments/"):
            return await self._cdn(request)
        if not path.startswith(API_PREFIX + "/"):
            return _json_response({"code": 0, "message": "404: Not Found"}, 404)
        rel = path[len(API_PREFIX) :]
        method = request.method.upper()
        try:
            for inj in self.injections:
                if inj.matches(method, rel):
                    inj.remaining -= 1
                    inj.hits += 1
                    resp = inj.response()
                    break
            else:
                resp = await self._route(request, method, rel)
        finally:
            # Eat any unread body so keep-alive connections stay usable.
            with contextlib.suppress(Exception):
                await request.release()
        self.requests.append((method, rel, resp.status))
        return resp

    async def _route(self, request: web.Request, method: str, rel: str) -> web.Response:
        allowed = False
        for route in self._routes:
            m = route.pattern.match(rel)
            if m is None:
                continue
            allowed = True
            if route.method != method:
                continue
            try:
                if route.auth and request.headers.get("Authorization") != f"Bot {self.bot_token}":
                    raise _ApiError(*UNAUTHORIZED)
                return await route.handler(request, *m.groups())
            except _ApiError as e:
                return e.response()
            except Exception as exc:
                # A bug in the fake must fail the client fast: a 500 would make discord.py
                # retry for ~25 s. The exception is kept in fake.errors for the test to see.
                self.errors.append(exc)
                return _json_response(
                    {"code": 0, "message": f"fake_discord internal error: {exc!r}"}, 400
                )
        if allowed:
            return _json_response({"code": 0, "message": "405: Method Not Allowed"}, 405)
        return _json_response({"code": 0, "message": "404: Not Found"}, 404)

    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any], list[_Upload]]:
        """Parse a JSON or multipart (payload_json + files[n]) body; enforce the 10 MiB cap."""
        ctype = request.content_type
        uploads: list[_Upload] = []
        payload: dict[str, Any] = {}
        if ctype == "multipart/form-data":
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                raw = await part.read(decode=False)
                fname = part.name or ""
                if fname == "payload_json":
                    payload = json.loads(raw.decode() or "{}")
                    continue
                m = re.fullmatch(r"files\[(\d+)\]", fname) or re.fullmatch(r"file(\d*)", fname)
                if m is None:
                    continue
                index = int(m.group(1) or 0)
                uploads.append(
                    _Upload(
                        index,
                        part.filename or f"file{index}",
                        part.headers.get(aiohttp.hdrs.CONTENT_TYPE),
                        bytes(raw),
                    )
                )
            # Checked after reading everything so the client sees a clean 413 reply.
            if any(len(u.data) > MAX_UPLOAD_BYTES for u in uploads):
                raise _ApiError(413, 40005, "Request entity too large")
            if sum(len(u.data) for u in uploads) > self.max_request_bytes:
                raise _ApiError(413, 40005, "Request entity too large")
        else:
            raw = await request.read()
            if raw:
                try:
                    payload = json.loads(raw)
                except ValueError:
                    raise _ApiError(400, 50109, "The request body contains invalid JSON.") from None
        if not isinstance(payload, dict):
            raise _ApiError(400, 50109, "The request body contains invalid JSON.")
        return payload, uploads
