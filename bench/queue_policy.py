"""The queue policy's cost over Redis itself, on a real redis-server.

Sleep-only workers (no model) take jobs and finish them, once through our queue (Lua
round-robin take over per-server lists into a consumer group, state hash, per-user sets, the
`posting` and `posted` moves) and once through a raw XADD / XREADGROUP / XACK loop. Prints
enqueue->pickup p50/p99 (until a worker holds the job) with jobs arriving one at a time, and
drain throughput (jobs/s) for 1 and 4 workers, plus the ratios; then our pickup again with
1,000 paused servers holding jobs (a paused server must cost the others nothing).

    python bench/queue_policy.py [--jobs 400] [--work-ms 0] [--servers 20] [--paused 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from redis.asyncio import Redis

from ponybot_cli.redis_server import RedisServer
from ponybot_core.config import Sampler
from ponybot_core.job import Job
from ponybot_core.keys import WORKER_GROUP, Keys
from ponybot_core.queue import Consumer, Producer

KEYS = Keys("bench")


def job(i: int, servers: int, first_server: int = 1) -> Job:
    return Job(application_id=1, interaction_id=i, interaction_token="t",
               guild_id=first_server + i % servers,
               channel_id=1, user_id=i, model_id="m", tags="pony", prompt="pony",
               negative_prompt="", seed=i, steps=20, cfg=7.5, sampler=Sampler.DDIM,
               width=512, height=512)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


class Ours:
    name = "ponybot queue (Lua round-robin)"

    def __init__(self, redis: Redis, paused: int = 0) -> None:
        self.redis = redis
        self.producer = Producer(redis, KEYS, result_ttl_s=60)
        self.paused = paused
        if paused:
            self.name = f"ponybot queue, {paused} paused servers"

    async def setup(self) -> None:
        await self.redis.flushdb()
        # Servers far from the bench's own, each with a job waiting for a resume.
        for i in range(self.paused):
            await self.producer.enqueue(job(i, self.paused, first_server=1_000_000))
            await self.producer.pause(1_000_000 + i)

    async def put(self, j: Job) -> None:
        await self.producer.enqueue(j)

    async def worker(self, name: str, picked_up: Callable[[str], None],
                     finished: Callable[[str], None], stop: asyncio.Event,
                     work_s: float) -> None:
        redis = Redis.from_url(_url)
        consumer = Consumer(redis, KEYS, name, lease_s=60, result_ttl_s=60)
        while not stop.is_set():
            for delivery in await consumer.take(count=1, block_s=0.05):
                picked_up(delivery.job.id)
                if work_s:
                    await asyncio.sleep(work_s)
                await delivery.posting()
                await delivery.posted(1)
                finished(delivery.job.id)
        await redis.aclose()


class Raw:
    name = "raw XADD/XREADGROUP/XACK"

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def setup(self) -> None:
        await self.redis.flushdb()
        await self.redis.xgroup_create("raw", WORKER_GROUP, id="0", mkstream=True)

    async def put(self, j: Job) -> None:
        await self.redis.xadd("raw", {"job": j.to_json(), "id": j.id})

    async def worker(self, name: str, picked_up: Callable[[str], None],
                     finished: Callable[[str], None], stop: asyncio.Event,
                     work_s: float) -> None:
        redis = Redis.from_url(_url)
        while not stop.is_set():
            # redis-py types XREADGROUP's reply for RESP3 too; this client speaks RESP2.
            reply = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                         await redis.xreadgroup(WORKER_GROUP, name, {"raw": ">"}, count=1,
                                                block=50))
            for entry_id, fields in reply[0][1] if reply else []:
                Job.from_json(fields[b"job"])  # the same parsing work as ours
                picked_up(fields[b"id"].decode())
                if work_s:
                    await asyncio.sleep(work_s)
                await redis.xack("raw", WORKER_GROUP, entry_id)
                await redis.xdel("raw", entry_id)
                finished(fields[b"id"].decode())
        await redis.aclose()


_url = ""


async def run(system: Ours | Raw, *, jobs: int, workers: int, servers: int, work_s: float,
              paced: bool) -> tuple[list[float], float]:
    await system.setup()
    put_at: dict[str, float] = {}
    pickup: list[float] = []
    remaining = jobs
    all_done = asyncio.Event()

    def picked_up(job_id: str) -> None:
        pickup.append(time.perf_counter() - put_at[job_id])

    def finished(job_id: str) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining <= 0:
            all_done.set()

    # Workers stop between takes when told (a cancelled one could be left inside a blocking
    # read, and the bench would never end).
    tasks = [asyncio.create_task(system.worker(f"w{i}", picked_up, finished, all_done, work_s))
             for i in range(workers)]
    await asyncio.sleep(0.2)
    start = time.perf_counter()
    for i in range(jobs):
        j = job(i, servers)
        put_at[j.id] = time.perf_counter()
        await system.put(j)
        if paced:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(all_done.wait(), 120)
    elapsed = time.perf_counter() - start
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return pickup, jobs / elapsed


async def main(jobs: int, work_ms: float, servers: int, paused: int) -> None:
    global _url
    with RedisServer(Path(tempfile.mkdtemp(prefix="ponyq-"))) as server:
        _url = server.url
        redis = Redis.from_url(server.url)
        rows = {}
        for system in (Raw(redis), Ours(redis)):
            latency, _ = await run(system, jobs=min(jobs, 200), workers=1, servers=servers,
                                   work_s=0, paced=True)
            _, one = await run(system, jobs=jobs, workers=1, servers=servers,
                               work_s=work_ms / 1000, paced=False)
            _, four = await run(system, jobs=jobs, workers=4, servers=servers,
                                work_s=work_ms / 1000, paced=False)
            rows[system.name] = (pct(latency, 50), pct(latency, 99), one, four)
        held = Ours(redis, paused=paused)
        latency, _ = await run(held, jobs=min(jobs, 200), workers=1, servers=servers, work_s=0,
                               paced=True)
        _, one = await run(held, jobs=jobs, workers=1, servers=servers, work_s=work_ms / 1000,
                           paced=False)
        held_row = (pct(latency, 50), pct(latency, 99), one)
        await redis.aclose()
    print(f"bench/queue_policy.py  jobs={jobs} servers={servers} work={work_ms:g} ms/job "
          f"(sleep-only workers, one process, redis-server {server.port})")
    print(f"{'':34} {'pickup p50':>11} {'pickup p99':>11} {'jobs/s 1w':>10} {'jobs/s 4w':>10}")
    for name, (p50, p99, one, four) in rows.items():
        print(f"{name:34} {p50:8.2f} ms {p99:8.2f} ms {one:10.0f} {four:10.0f}")
    raw, ours = rows[Raw.name], rows[Ours.name]
    print(f"{'ours / raw':34} {ours[0] / raw[0]:10.2f}x {ours[1] / raw[1]:10.2f}x "
          f"{ours[2] / raw[2]:9.2f}x {ours[3] / raw[3]:9.2f}x")
    print(f"{f'ours, {paused} paused servers':34} "
          f"{held_row[0]:8.2f} ms {held_row[1]:8.2f} ms {held_row[2]:10.0f}")
    print(f"pickup p50, ours / raw: {ours[0] / raw[0]:.2f}x (target: within 2x); "
          f"with {paused} paused servers: {held_row[0] / raw[0]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--paused", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.work_ms, args.servers, args.paused))
