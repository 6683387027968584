"""Interaction-token webhook routes: followups and edits of ``@original``, no bot token.

These are what a bot uses after answering (``interaction.followup``,
``edit_original_response``) and what a separate HTTP-only client uses to finish a job's
message. The token lives 15 minutes on the fake clock; the first followup after a deferred
("thinking") reply replaces that placeholder, as Discord does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ponybot_testkit.fake_discord.rules import (
    _SETTABLE_FLAGS,
    EPHEMERAL,
    LOADING,
    TOKEN_LIFETIME_S,
    _ApiError,
    _json_response,
)

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import FakeClock
    from ponybot_testkit.fake_discord.model import FakeInteraction, FakeMessage
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class WebhookRoutes(FakeParts):
    """Handlers for ``/webhooks/{application id}/{token}[/messages/{id}]``."""

    application_id: int
    clock: FakeClock
    messages: dict[int, FakeMessage]
    _by_token: dict[str, FakeInteraction]

    def _webhook_itx(self, app_id: str, token: str) -> FakeInteraction:
        itx = self._by_token.get(token)
        if itx is None:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        if int(app_id) != self.application_id:
            raise _ApiError(404, 10015, "Unknown Webhook")
        if self.clock.monotonic() - itx._created_mono > TOKEN_LIFETIME_S:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        return itx

    def _webhook_message(self, itx: FakeInteraction, mid: str) -> FakeMessage:
        if mid == "@original":
            msg = itx.original
        else:
            try:
                wanted = int(mid)
            except ValueError:
                raise _ApiError(404, 10008, "Unknown Message") from None
            ok = wanted == itx.original_id or wanted in itx.followup_ids
            msg = self.messages.get(wanted) if ok else None
        if msg is None or msg.deleted:
            raise _ApiError(404, 10008, "Unknown Message")
        return msg

    async def _webhook_post(self, request: web.Request, app_id: str, token: str) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        payload, uploads = await self._read_body(request)
        orig = itx.original
        if orig is not None and orig.flags & LOADING and not orig.edits:
            # Discord: the first followup after a deferred reply replaces the "thinking" one.
            self._edit_message(orig, payload, uploads)
            msg = orig
        else:
            msg = self._create_message(
                itx.channel_id,
                payload,
                uploads,
                via="webhook",
                flags_mask=_SETTABLE_FLAGS | EPHEMERAL,
                interaction=itx,
            )
            itx.followup_ids.append(msg.id)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return _json_response(self._message_json(msg))
        return web.Response(status=204)

    async def _webhook_get(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        return _json_response(self._message_json(self._webhook_message(itx, mid)))

    async def _webhook_patch(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        payload, uploads = await self._read_body(request)
        msg = self._webhook_message(itx, mid)
        self._edit_message(msg, payload, uploads)
        return _json_response(self._message_json(msg))

    async def _webhook_delete(
        self, request: web.Request, app_id: str, token: str, mid: str
    ) -> web.Response:
        itx = self._webhook_itx(app_id, token)
        self._delete_message(self._webhook_message(itx, mid))
        return web.Response(status=204)
