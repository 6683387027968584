"""A Sentinel failover as the bot's queue sees it, on a real primary, replica and three
sentinels on loopback (ponybot_testkit/sentinel_cluster.py), through the bot's own client
(`bot_redis` on the sentinels) and enqueue (`Producer.enqueue`, with and without WAIT).

Prints:
1. the WAIT cost per enqueue: enqueue latency p50/p99 with `ack_replicas = 1` and with 0,
   jobs one after another, and the difference;
2. the failover time the clients see: from `kill -9` of the primary to the first enqueue the
   new primary accepts (and how many enqueues failed meanwhile), under a steady load;
3. jobs acknowledged vs found after the failover, with WAIT and without, for a plain kill and
   for a kill CUT_S after the link between the primary and its replica broke (the window Redis'
   asynchronous replication leaves: without WAIT, every job acknowledged after the break is
   lost when the cut-off replica is promoted).

    python bench/redis_failover.py [--jobs 1000] [--down-after-ms 1000] [--load 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.exceptions import RedisError

from ponybot_core.config import Sampler
from ponybot_core.job import Job
from ponybot_core.keys import Keys
from ponybot_core.queue import Producer, QueueReads
from ponybot_core.redis_client import bot_redis, worker_redis
from ponybot_core.replicas import Replication, ReplicaWait
from ponybot_testkit.sentinel_cluster import SentinelCluster

KEYS = Keys("bench")
ACK_TIMEOUT_MS = 500
# How long the load goes on between the break of the replica's link and the primary's death.
CUT_S = 1.5


def job(i: int) -> Job:
    return Job(application_id=1, interaction_id=i, interaction_token="t", guild_id=1 + i % 20,
               channel_id=1, user_id=i, model_id="m", tags="pony", prompt="pony",
               negative_prompt="", seed=i, steps=20, cfg=7.5, sampler=Sampler.DDIM,
               width=512, height=512)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def producer(cluster: SentinelCluster, *, wait: bool) -> Producer:
    return Producer(bot_redis(cluster.service()), KEYS, result_ttl_s=600,
                    replica_wait=ReplicaWait(1, ACK_TIMEOUT_MS) if wait else None)


async def enqueue_cost(cluster: SentinelCluster, jobs: int, *, wait: bool) -> list[float]:
    queue = producer(cluster, wait=wait)
    took = []
    try:
        for i in range(jobs):
            start = time.perf_counter()
            enqueued = await queue.enqueue(job(i))
            took.append(time.perf_counter() - start)
            assert enqueued.replication in (Replication.CONFIRMED, Replication.NOT_ASKED)
    finally:
        await queue.redis.aclose()
    return took


@dataclass
class Run:
    acked: list[tuple[str, float]] = field(default_factory=list)  # job id, when
    refused: int = 0
    failed: list[float] = field(default_factory=list)  # when an enqueue raised


async def failover(cluster: SentinelCluster, *, wait: bool, cut: bool, jobs: int,
                   load: int) -> tuple[Run, float, float, set[str]]:
    """Enqueue with `load` concurrent callers; after `jobs` acknowledged, (cut the replica
    off and keep going for CUT_S, then) kill the primary; go on until `jobs` more are
    acknowledged. (run, kill time, first ack on the new primary, acked ids found after)."""
    queue = producer(cluster, wait=wait)
    run = Run()
    killed_at: float | None = None
    seen_new: float | None = None
    counter = iter(range(10**9))
    first_jobs = asyncio.Event()

    async def caller() -> None:
        nonlocal seen_new
        while killed_at is None or sum(1 for _, t in run.acked if t > killed_at) < jobs:
            j = job(next(counter))
            asked_after_kill = killed_at is not None
            try:
                enqueued = await queue.enqueue(j)
            except RedisError:
                run.failed.append(time.monotonic())
                await asyncio.sleep(0.01)  # as users retrying, not a busy loop
                continue
            now = time.monotonic()
            if enqueued.replication is Replication.LAGGING:
                run.refused += 1
                await queue.cancel(j.id)  # what the bot does: take it back
                continue
            run.acked.append((j.id, now))
            if len(run.acked) >= jobs:
                first_jobs.set()
            if asked_after_kill and seen_new is None:  # asked and answered after the kill
                seen_new = now

    callers = [asyncio.create_task(caller()) for _ in range(load)]
    await first_jobs.wait()
    if cut:
        await asyncio.to_thread(cluster.cut_replica)
        await asyncio.sleep(CUT_S)  # the load goes on: the window under test
    subscription = await asyncio.to_thread(cluster.subscribe_switch)
    await asyncio.to_thread(cluster.kill_primary)
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.switched, subscription)
    await asyncio.gather(*callers)
    await queue.redis.aclose()
    reader = worker_redis(cluster.service(), block_s=0)
    try:
        states = await QueueReads(reader, KEYS).states([i for i, _ in run.acked])
    finally:
        await reader.aclose()
    assert seen_new is not None
    return run, killed_at, seen_new, {i for i, s in states.items() if s is not None}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--down-after-ms", type=int, default=1000)
    parser.add_argument("--load", type=int, default=4, help="concurrent enqueuers")
    args = parser.parse_args()
    print(f"sentinel down-after-milliseconds {args.down_after_ms}, failover-timeout 3000, "
          f"WAIT timeout {ACK_TIMEOUT_MS} ms, {args.load} concurrent enqueuers")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = SentinelCluster(Path(tmp) / "cost", down_after_ms=args.down_after_ms)
        cluster.start()
        try:
            plain = await enqueue_cost(cluster, args.jobs, wait=False)
            waited = await enqueue_cost(cluster, args.jobs, wait=True)
        finally:
            cluster.stop()
        print(f"\n1. enqueue, {args.jobs} one after another (ms):")
        print(f"   without WAIT  p50 {pct(plain, 50):6.3f}  p99 {pct(plain, 99):6.3f}")
        print(f"   WAIT 1        p50 {pct(waited, 50):6.3f}  p99 {pct(waited, 99):6.3f}")
        print(f"   WAIT cost     p50 {pct(waited, 50) - pct(plain, 50):+6.3f}  "
              f"p99 {pct(waited, 99) - pct(plain, 99):+6.3f}")
        print("\n2./3. kill -9 of the primary mid-load:")
        print(f"   {'scenario':32} {'acked':>6} {'found':>6} {'lost':>5} {'refused':>7} "
              f"{'failed calls':>12} {'failover seen':>14} {'loss window':>12}")
        for n, (wait, cut) in enumerate([(True, False), (False, False), (True, True),
                                         (False, True)]):
            cluster = SentinelCluster(Path(tmp) / f"run{n}", down_after_ms=args.down_after_ms)
            cluster.start()
            try:
                run, killed_at, seen_new, found = await failover(
                    cluster, wait=wait, cut=cut, jobs=args.jobs // 2, load=args.load)
            finally:
                cluster.stop()
            name = ("WAIT 1" if wait else "no WAIT") + (f", link cut {CUT_S} s before" if cut
                                                         else ", plain kill")
            lost = [t for i, t in run.acked if i not in found]
            # Acknowledged jobs lost: how long before the kill the first of them was told.
            window = f"{(killed_at - min(lost)) * 1000:9.0f} ms" if lost else "none"
            print(f"   {name:32} {len(run.acked):6d} {len(found):6d} {len(lost):5d} "
                  f"{run.refused:7d} {len(run.failed):12d} "
                  f"{(seen_new - killed_at) * 1000:11.0f} ms {window:>12}")


if __name__ == "__main__":
    asyncio.run(main())
