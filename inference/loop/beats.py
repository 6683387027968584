"""What a worker says about itself while it runs: a heartbeat every few seconds (loaded models,
what its files allow it to serve, throughput; read by `/model list`, `/queue workers` and the
bot's availability check), and a periodic tidy of the consumer group.

Throughput is images per second and the share of wall time spent sampling, over a sliding
window: what `/queue workers` and the worker's log show about how busy the GPU is."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from inference.models.inventory import Inventory, check_all
from ponybot_core.config import Config
from ponybot_core.heartbeat import WorkerHeartbeat, publish_heartbeat, read_heartbeats
from ponybot_core.keys import Keys
from ponybot_core.queue import Consumer

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
TIDY_EVERY_S = 60.0
# Consumers of departed workers are deleted once idle this long (and never below 10 leases).
DEPARTED_AFTER_S = 600.0


class Beats:
    def __init__(self, redis: Redis, keys: Keys, config: Config, base_dir: Path, name: str,
                 stats: Callable[[], dict[str, object]]) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.base_dir = base_dir
        self.name = name
        # The worker's live figures (models loaded, current job, jobs done, throughput).
        self.stats = stats
        self.inventory: Inventory | None = None

    async def check_files(self) -> Inventory:
        """Which models and upscalers this worker can use (no weights loaded); logged the first
        time, re-checked with every beat so a file added later is noticed."""
        first = self.inventory is None
        self.inventory = await asyncio.to_thread(check_all, self.config, self.base_dir)
        if first:
            log.info("worker %s: models and upscalers\n%s", self.name, self.inventory.table())
        return self.inventory

    async def publish(self) -> None:
        inventory = await self.check_files()
        beat = WorkerHeartbeat(
            **inventory.heartbeat_fields(),
            **self.stats(),
            name=self.name, host=socket.gethostname(), at=time.time(),
        )  # fmt: skip
        try:
            await publish_heartbeat(self.redis, self.keys, beat, ttl_s=HEARTBEAT_S * 3)
        except Exception as exc:  # Redis blips must not kill the worker.
            log.warning("heartbeat failed: %s", exc)

    async def run(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(HEARTBEAT_S)


async def tidy(redis: Redis, keys: Keys, consumer: Consumer, *, lease_s: float) -> None:
    """Forget the consumers of workers that are gone (each process is a new consumer)."""
    while True:
        await asyncio.sleep(TIDY_EVERY_S)
        try:
            live = {beat.name for beat in await read_heartbeats(redis, keys)}
            idle_s = max(DEPARTED_AFTER_S, 10 * lease_s)
            for name in await consumer.forget_departed(live, idle_s=idle_s):
                log.info("forgot departed worker %s", name)
        except Exception as exc:
            log.warning("tidying the consumer group failed: %s", exc)


class Throughput:
    """The heartbeat's throughput figures, over the last `window_s` seconds."""

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
