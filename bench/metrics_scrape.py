"""What one Prometheus scrape of the bot's queue gauges (bot/metrics.py `QueueGauges`) costs, by
how many jobs are queued: the gauges are read from Redis on the bot's event loop at every
scrape, so their read must stay bounded however long the queue grows.

On a real redis-server this bench starts, N jobs are queued through the real queue code across
S servers, and two reads are timed: `QueueReads.waiting_by_model` (what the gauges read: every
waiting list's length and at most `WAITING_SAMPLE` jobs' model and age) and
`QueueReads.snapshot(all_guilds=True)` (the admins' full snapshot, which reads every job: what a
naive gauge would do). For each it prints the median wall time, the longest stretch the event
loop could not run anything else, and the per-model depth the gauges report.

    python bench/metrics_scrape.py [--jobs 1000 10000] [--servers 50] [--cycles 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from ponybot_cli.redis_server import RedisServer
from ponybot_core.config import Sampler
from ponybot_core.job import Job
from ponybot_core.keys import Keys
from ponybot_core.queue import Producer, QueueReads
from ponybot_core.queue.reads import WAITING_SAMPLE

KEYS = Keys("bench")
GUILD = 1_000_000_000_000_001
MODELS = ("pony-diffusion-v4", "pony-diffusion-v6-xl", "pony-diffusion-v5")


def job(i: int, servers: int) -> Job:
    return Job(application_id=1_000_000_000_000_001, interaction_id=1_300_000_000_000_000 + i,
               interaction_token="token" * 20, guild_id=GUILD + i % servers,
               channel_id=1_100_000_000_000_001, user_id=1_200_000_000_000_000 + i,
               model_id=MODELS[i % len(MODELS)], tags="twilight sparkle, solo",
               prompt="score_9, twilight sparkle, solo", negative_prompt="lowres", seed=i,
               steps=25, cfg=7.5, sampler=Sampler.DDIM, width=512, height=512)


async def timed(read: Callable[[], Awaitable[object]], cycles: int) -> tuple[float, float]:
    """(median seconds per read, longest event-loop stall in seconds) over `cycles` reads."""
    stalls: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    walls = []
    for _ in range(cycles):
        start = time.perf_counter()
        await read()
        walls.append(time.perf_counter() - start)
    running = False
    await tick
    return statistics.median(walls), max(stalls)


async def bench(redis: Redis, n: int, servers: int, cycles: int) -> None:
    await redis.flushall()
    producer = Producer(redis, KEYS, result_ttl_s=3600)
    reads = QueueReads(redis, KEYS)
    for i in range(n):
        await producer.enqueue(job(i, servers))

    async def gauges() -> None:
        await reads.waiting_by_model()

    async def snapshot() -> None:
        await reads.snapshot(all_guilds=True)

    for name, read in (("gauges (bounded)", gauges), ("full snapshot", snapshot)):
        wall, stall = await timed(read, cycles)
        print(f"  {n:>6} {name:<18} {wall * 1000:>8.1f} ms/scrape   "
              f"longest stall {stall * 1000:>7.1f} ms")
    waiting = await reads.waiting_by_model()
    depth = ", ".join(f"{m} {c:.0f}" for m, c in sorted(waiting.by_model.items()))
    print(f"  {'':>6} reported: {waiting.jobs} jobs; by model {depth}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        redis = Redis.from_url(server.url)
        try:
            print(f"redis-server {(await redis.info('server'))['redis_version']}, "
                  f"{args.servers} servers, sample {WAITING_SAMPLE} jobs")
            print("  queued read               wall              event loop")
            for n in args.jobs:
                await bench(redis, n, args.servers, args.cycles)
        finally:
            await redis.aclose()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
