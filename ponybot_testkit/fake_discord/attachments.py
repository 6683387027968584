"""Uploads become attachments, and the fake serves them back like Discord's CDN.

An attachment's URL points at this fake (``/attachments/{channel}/{id}/{filename}``), so a
test, or the bot, can download exactly the bytes that were uploaded. The content type is
sniffed from the filename, as Discord does (discord.py labels every part
application/octet-stream).
"""

from __future__ import annotations

import mimetypes
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from ponybot_testkit.fake_discord.model import FakeAttachment, _Upload

if TYPE_CHECKING:
    from ponybot_testkit.fake_discord.clock import _Snowflakes
    from ponybot_testkit.fake_discord.parts import FakeParts
else:
    FakeParts = object  # the type checker's view of the other mixins (parts.py)


class Attachments(FakeParts):
    """``_make_attachment`` stores an upload; ``_cdn`` serves it (and records the path in
    ``cdn_requests``). Needs ``base_url``."""

    attachments: dict[int, FakeAttachment]
    cdn_requests: list[str]
    _snowflakes: _Snowflakes

    def _make_attachment(self, channel_id: int, up: _Upload, *, ephemeral: bool) -> FakeAttachment:
        aid = self._snowflakes.next()
        guessed = mimetypes.guess_type(up.filename)[0]
        # discord.py always labels parts application/octet-stream; Discord sniffs the type.
        ctype = guessed or up.content_type or "application/octet-stream"
        att = FakeAttachment(
            id=aid,
            filename=up.filename,
            content_type=ctype,
            data=up.data,
            url=f"{self.base_url}/attachments/{channel_id}/{aid}/{quote(up.filename)}",
            ephemeral=ephemeral,
        )
        self.attachments[aid] = att
        return att

    async def _cdn(self, request: web.Request) -> web.Response:
        self.cdn_requests.append(request.path)
        m = re.fullmatch(r"/attachments/(\d+)/(\d+)/(.+)", request.path)
        att = self.attachments.get(int(m.group(2))) if m else None
        if m is None or att is None or att.filename != m.group(3):
            return web.Response(status=404, text="Not Found")
        body = att.data if att.served is None else att.served
        return web.Response(body=body, headers={"Content-Type": att.content_type})


def _apply_attachment_meta(
    atts: list[FakeAttachment], uploads: list[_Upload], meta: list[dict[str, Any]] | None
) -> None:
    # payload_json "attachments": entries whose id is an upload index rename/describe it.
    if not meta:
        return
    by_index = {str(m.get("id")): m for m in meta}
    for att, up in zip(atts, uploads, strict=True):
        m = by_index.get(str(up.index))
        if m is None:
            continue
        if m.get("filename"):
            att.filename = m["filename"]
            att.url = att.url.rsplit("/", 1)[0] + "/" + quote(att.filename)
        if m.get("description") is not None:
            att.description = m["description"]
