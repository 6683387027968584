"""The interaction callback: how the bot answers an interaction, once, within 3 seconds.

``POST /interactions/{id}/{token}/callback`` creates the ``@original`` message (type 4),
a "thinking" placeholder (5), acknowledges or edits the clicked message (6, 7) or answers
autocomplete (8). Late callbacks get 404 / 10062, second ones 400 / 40060; every attempt,
accepted or not, is kept on the ``FakeInteraction``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ponybot_testkit.fake_discord.rules import (
    _SETTABLE_FLAGS,
    ACK_WINDOW_S,
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    EPHEMERAL,
    LOADING,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    _ApiError,
    _form_error,
    _json_response,
)

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import FakeClock
    from ponybot_testkit.fake_discord.model import FakeInteraction, FakeMessage, _Upload
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class CallbackRoute(FakeParts):
    """The callback handler; messages through ``messages``."""

    clock: FakeClock
    messages: dict[int, FakeMessage]
    interactions: dict[int, FakeInteraction]

    async def _callback(self, request: web.Request, iid: str, token: str) -> web.Response:
        itx = self.interactions.get(int(iid))
        if itx is None or itx.token != token:
            raise _ApiError(404, 10062, "Unknown interaction")
        try:
            payload, uploads = await self._read_body(request)
        except _ApiError as e:
            itx.callback_attempts.append((e.status, e.code, {}))
            raise
        try:
            resp = self._apply_callback(itx, payload, uploads)
        except _ApiError as e:
            itx.callback_attempts.append((e.status, e.code, payload))
            raise
        itx.callback_attempts.append((200, None, payload))
        itx.response = payload
        itx._responded.set()
        if request.query.get("with_response", "").lower() in ("1", "true"):
            return _json_response(resp)
        return web.Response(status=204)

    def _apply_callback(
        self, itx: FakeInteraction, payload: dict[str, Any], uploads: list[_Upload]
    ) -> dict[str, Any]:
        if itx.acknowledged:
            raise _ApiError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock.monotonic() - itx._created_mono > ACK_WINDOW_S:
            raise _ApiError(404, 10062, "Unknown interaction")
        rtype = payload.get("type")
        data = payload.get("data") or {}
        allowed = {
            APPLICATION_COMMAND: {4, 5, 9},
            MESSAGE_COMPONENT: {4, 5, 6, 7, 9},
            MODAL_SUBMIT: {4, 5, 6, 7},
            AUTOCOMPLETE: {8},
        }[itx.type]
        if rtype not in allowed:
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", f"Invalid type {rtype}")
        message: FakeMessage | None = None
        if rtype == 4:
            message = self._create_message(
                itx.channel_id,
                data,
                uploads,
                via="interaction",
                flags_mask=_SETTABLE_FLAGS | EPHEMERAL,
                interaction=itx,
                msg_type=20 if itx.type == APPLICATION_COMMAND else 0,
            )
            itx.original_id = message.id
        elif rtype == 5:
            flags = (int(data.get("flags") or 0) & EPHEMERAL) | LOADING
            message = self._create_message(
                itx.channel_id,
                {"content": "", "flags": flags},
                [],
                via="interaction",
                flags_mask=EPHEMERAL | LOADING,
                interaction=itx,
                allow_empty=True,
                msg_type=20 if itx.type == APPLICATION_COMMAND else 0,
            )
            itx.original_id = message.id
        elif rtype in (6, 7):
            if itx.message_id is None:
                raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "No message")
            message = self.messages[itx.message_id]
            if rtype == 7:
                self._edit_message(message, data, uploads)
            itx.original_id = message.id
        elif rtype == 8:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise _form_error(
                    "data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            for i, c in enumerate(choices):
                if not 1 <= len(str(c.get("name", ""))) <= 100:
                    raise _form_error(
                        f"data.choices.{i}.name",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.",
                    )
        interaction: dict[str, Any] = {"id": str(itx.id), "type": itx.type}
        resource: dict[str, Any] = {"type": rtype}
        if message is not None:
            interaction["response_message_id"] = str(message.id)
            interaction["response_message_loading"] = bool(message.flags & LOADING)
            interaction["response_message_ephemeral"] = message.ephemeral
            resource["message"] = self._message_json(message)
        return {"interaction": interaction, "resource": resource}
