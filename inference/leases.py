"""One lease keeper for every job a worker holds, from the moment it is taken until it is
finished: jobs waiting behind a model load, a long sampling or the previous batch's upload
are renewed like the one being drawn, so no other worker takes them over while this one is
alive. A job found held by another worker (this one was presumed dead) is marked `lost`."""

from __future__ import annotations

import asyncio
import logging

from inference.retrying import is_unavailable
from ponybot_core.logs import JobLog
from ponybot_core.queue import Consumer, Delivery

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, consumer: Consumer, *, lease_s: float) -> None:
        self.consumer = consumer
        # Three renewals per lease: one failed renewal (a blip) costs nothing.
        self.interval_s = lease_s / 3
        self.held: dict[str, Delivery] = {}

    def hold(self, delivery: Delivery) -> None:
        self.held[delivery.job_id] = delivery

    def release(self, delivery: Delivery) -> None:
        self.held.pop(delivery.job_id, None)

    async def renew_now(self) -> None:
        deliveries = list(self.held.values())
        for delivery in await self.consumer.renew(deliveries):
            JobLog(log, delivery.job_id).warning(
                "lease lost: another worker holds this job now; dropping it")
            self.release(delivery)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.renew_now()
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("lease renewal failed")
                else:
                    log.warning("lease renewal skipped: Redis unavailable (%s)", exc)
