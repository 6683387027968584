"""Fault injection: make the next matching requests fail the way Discord fails.

``fake.inject("POST", r"/channels/\\d+/messages$", 429)`` answers the next matching request
with Discord's rate-limit body and headers (or a 5xx JSON error) instead of routing it;
``routing`` consults ``fake.injections`` before any handler runs.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from dataclasses import dataclass

from aiohttp import web

from ponybot_testkit.fake_discord.rules import _json_response


@dataclass
class Injection:
    """A pending fault: the next ``remaining`` requests matching method/path get ``status``."""

    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float
    is_global: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method.upper())
            and self.pattern.search(path) is not None
        )

    def response(self) -> web.Response:
        if self.status == 429:
            reset_after = self.retry_after
            headers = {
                # Without Via discord.py takes a 429 for a Cloudflare ban and gives up.
                "Via": "1.1 google",
                "Retry-After": str(max(1, math.ceil(reset_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": f"fake{zlib.crc32(self.pattern.pattern.encode()):08x}",
                "X-RateLimit-Scope": "global" if self.is_global else "user",
            }
            if self.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {
                "message": "You are being rate limited.",
                "retry_after": self.retry_after,
                "global": self.is_global,
            }
            return _json_response(body, status=429, headers=headers)
        reasons = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
        reason = reasons.get(self.status, "Error")
        return _json_response({"code": 0, "message": f"{self.status}: {reason}"}, self.status)


class FaultInjection:
    """``inject``: queue faults in ``self.injections``."""

    injections: list[Injection]

    def inject(
        self,
        method: str,
        path_regex: str,
        status: int,
        count: int = 1,
        retry_after: float = 0.1,
        *,
        is_global: bool = False,
    ) -> Injection:
        """Answer the next ``count`` requests matching method and path with ``status``.

        ``method`` may be ``"*"``; ``path_regex`` is searched in the path relative to the API
        base (e.g. ``r"/channels/\\d+/messages$"``). 429 comes with Discord's body and
        headers (``Retry-After``, ``X-RateLimit-*``, ``Via``); 5xx with a JSON error.
        """
        inj = Injection(
            method.upper(), re.compile(path_regex), int(status), count, retry_after, is_global
        )
        self.injections.append(inj)
        return inj
