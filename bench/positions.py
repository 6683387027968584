"""What one cycle of the positions loop (cogs/positions.py) costs the bot's event loop, by how
many jobs are queued: the loop reads every queued job every few seconds to decide which
messages to edit, and while it parses, no /pony is answered.

On a real redis-server this bench starts, N jobs are queued through the real queue code with
their queued messages recorded (as `/pony` leaves them), and the decision pass is timed two
ways: reading every job's whole hash (`QueueReads.states`, what the loop did before) and
reading a few fields per job in chunks (`QueueReads.shown`, what it does now). A whole job is
read besides only for each message edited (at most `MAX_EDITS_PER_CYCLE`; none here). For each
it prints the median wall time of a cycle and the longest stretch the event loop could not
run anything else (a ticker task measures the gaps between its turns).

    python bench/positions.py [--jobs 100 500 1000] [--cycles 7]
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

KEYS = Keys("bench")
GUILD = 1_000_000_000_000_001
TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTpxd2VydHl1aW9wYXNkZmdoamts" * 3
TAGS = ("twilight sparkle, rainbow dash, fluttershy, rarity, applejack, pinkie pie, unicorn, "
        "pegasus, earth pony, smiling, looking at viewer, outdoors, ponyville, sunset, "
        "detailed background, artist:foo, safe, solo focus, happy, cute")


def job(i: int) -> Job:
    return Job(application_id=1_000_000_000_000_001, interaction_id=1_300_000_000_000_000 + i,
               interaction_token=TOKEN, guild_id=GUILD + i % 3, channel_id=1_100_000_000_000_001,
               user_id=1_200_000_000_000_000 + i, model_id="pony-diffusion-v4", tags=TAGS,
               negative_tags="grimdark, blood", prompt="score_9, " + TAGS,
               negative_prompt="lowres, bad anatomy", seed=1_234_567_890 + i, steps=25,
               cfg=7.5, sampler=Sampler.DDIM, width=512, height=512, count=4,
               attachment_limit=10 * 1024 * 1024)


async def timed(cycle: Callable[[], Awaitable[object]], cycles: int) -> tuple[float, float]:
    """(median seconds per cycle, longest event-loop stall in seconds) over `cycles` cycles."""
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
        await cycle()
        walls.append(time.perf_counter() - start)
    running = False
    await tick
    return statistics.median(walls), max(stalls)


async def bench(redis: Redis, n: int, cycles: int) -> None:
    await redis.flushall()
    producer = Producer(redis, KEYS, result_ttl_s=3600)
    reads = QueueReads(redis, KEYS)
    for i in range(n):
        j = job(i)
        placed = await producer.enqueue(j)
        await producer.record_message(j.id, 1_400_000_000_000_000 + i, position=placed.position)

    async def whole() -> None:
        await reads.states(await reads.positions())

    async def few_fields() -> None:
        await reads.shown(await reads.positions())

    for name, cycle in (("whole hashes (before)", whole), ("few fields (now)", few_fields)):
        wall, stall = await timed(cycle, cycles)
        print(f"  {n:>5} {name:<22} {wall * 1000:>8.1f} ms/cycle   "
              f"longest stall {stall * 1000:>7.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--cycles", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        redis = Redis.from_url(server.url)
        try:
            print(f"redis-server {(await redis.info('server'))['redis_version']}")
            print("  queued read                   wall          event loop")
            for n in args.jobs:
                await bench(redis, n, args.cycles)
        finally:
            await redis.aclose()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
