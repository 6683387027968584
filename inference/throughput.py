"""Images per second and the share of wall time spent sampling, over a sliding window: what
`/queue workers` and the worker's log show about how busy the GPU is."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class Throughput:
    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        # (end time, seconds spent sampling, images)
        self._samples: deque[tuple[float, float, int]] = deque()

    def record(self, sampling_s: float, images: int) -> None:
        self._samples.append((self.clock(), sampling_s, images))
        self._forget()

    def images_per_s(self) -> float:
        self._forget()
        return sum(n for _, _, n in self._samples) / self._span()

    def busy_fraction(self) -> float:
        self._forget()
        return min(1.0, sum(s for _, s, _ in self._samples) / self._span())

    def _span(self) -> float:
        # A worker younger than the window is judged over its life so far.
        return max(1e-9, min(self.window_s, self.clock() - self.started))

    def _forget(self) -> None:
        horizon = self.clock() - self.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
