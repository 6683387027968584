"""Fake time for the fake Discord: a clock tests can push forward, and snowflakes read off it.

Every deadline Discord keeps (the 3 s ack window, the 15 min token lifetime), every
timestamp and every id's time bits come from one ``FakeClock``, so a test expires an
interaction with ``fake.clock.advance(4)`` instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import time

DISCORD_EPOCH_MS = 1420070400000


def snowflake_time(snowflake: int) -> float:
    """Unix time (seconds) encoded in a snowflake, like ``discord.utils.snowflake_time``."""
    return ((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000.0


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


class FakeClock:
    """Real time plus an offset that tests can push forward with :meth:`advance`.

    All interaction deadlines (3 s ack window, 15 min token lifetime), timestamps and
    snowflakes use this clock, so tests can expire things without sleeping.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        """Monotonic seconds, shifted by the offset (used for deadlines)."""
        return time.monotonic() + self.offset

    def time(self) -> float:
        """Unix wall time, shifted by the offset (used for snowflakes and timestamps)."""
        return time.time() + self.offset

    def now(self) -> dt.datetime:
        """Shifted wall time as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("the fake clock only moves forward")
        self.offset += seconds


class _Snowflakes:
    """Generates snowflakes whose timestamp bits come from the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._inc = 0
        self._last = 0

    def next(self) -> int:
        ms = int(self._clock.time() * 1000) - DISCORD_EPOCH_MS
        self._inc = (self._inc + 1) % 4096
        value = (ms << 22) | (1 << 17) | (1 << 12) | self._inc
        # Strictly increasing even within one millisecond / after 4096 ids.
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return value
