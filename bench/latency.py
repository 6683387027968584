"""Latency of the /pony path on real parts: fake Discord + real discord.py, real redis-server,
the tiny diffusers model on this machine's CPU (or a GPU with --device cuda).

Prints
- interaction -> ack: from the gateway dispatch of N concurrent /pony to the bot's answer;
- enqueue -> pickup: from the job's XADD to a worker starting it (Redis server clock);
- the worker's non-sampling overhead (load, encode, post, queue) as a fraction of sampling.

    python bench/latency.py [--jobs 50] [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from redis.asyncio import Redis

from ponybot_cli.redis_server import RedisServer
from ponybot_core.config import LoadedConfig, Secrets
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.keys import Keys
from ponybot_core.queue import QueueReads
from ponybot_testkit import world as t
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.tiny_models import build_tiny_pipeline


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    return (f"{name:<34} p50 {percentile(values, 50) * scale:8.2f} {unit}   "
            f"p99 {percentile(values, 99) * scale:8.2f} {unit}   (n={len(values)})")


async def bench(jobs: int, sequential: int, steps: int, device: str) -> None:
    from inference.models.cache import ModelCache
    from inference.models.device import choose_placement
    from inference.worker import Worker, logged_in_client

    work = Path(tempfile.mkdtemp(prefix="ponybench-"))
    pipeline = build_tiny_pipeline(work / "tiny")
    server = RedisServer(work / "redis")
    server.start()
    fake = FakeDiscord(bot_token=t.BOT_TOKEN, application_id=t.APPLICATION_ID,
                       bot_user_id=t.BOT_USER_ID, owner_id=t.OWNER_ID)
    fake.add_guild(t.GUILD_ID, name="bench", owner_id=t.OWNER_ID)
    fake.add_channel(t.GUILD_ID, t.CHANNEL_ID, name="general")
    for i in range(max(jobs, sequential)):  # one user per command: per-user caps stay out
        fake.add_user(t.USER_ID + i, name=f"bench{i}")
    await fake.start()
    config = t.tiny_config(pipeline, fake)
    config = config.model_copy(update={"worker": config.worker.model_copy(
        update={"device": device})})
    settings = LoadedConfig(config=config, secrets=Secrets(DISCORD_TOKEN=t.BOT_TOKEN,
                        REDIS_URL=server.url), path=work / "config.toml")
    redis = Redis.from_url(server.url)
    placement = choose_placement(device)
    models = ModelCache(config, base_dir=work, placement=placement)
    await models.get("tiny")  # warm: cold loads are bench/model_load.py's business
    use_endpoints(config.discord)
    client = await logged_in_client(t.BOT_TOKEN)
    worker = Worker(settings, Redis.from_url(server.url), client, name="bench", models=models)
    try:
        async with t.running_bot(settings, fake):
            worker_task = asyncio.create_task(worker.run())

            async def one(i: int) -> float:
                start = time.perf_counter()
                itx = await fake.invoke("pony", {"tags": f"pony, solo, seed {i}", "steps": steps},
                                        guild_id=t.GUILD_ID, channel_id=t.CHANNEL_ID,
                                        user_id=t.USER_ID + i)
                await itx.wait_response(timeout=10)
                return time.perf_counter() - start

            # Phase 1: a burst of concurrent commands, as when a server wakes up.
            acks = await asyncio.gather(*(one(i) for i in range(jobs)))
            await fake.wait_for(lambda: worker.jobs_done >= jobs, timeout=600)
            await redis.flushdb()
            # Phase 2: one job at a time, so pickup latency is the queue's, not the backlog's.
            for i in range(sequential):
                await one(i)

                def done(at_least: int = jobs + i + 1) -> bool:
                    return worker.jobs_done >= at_least

                await fake.wait_for(done, timeout=60)
            keys = Keys(config.redis.key_prefix)
            ids = [keys.job_id(key) async for key in redis.scan_iter(match=keys.job("*"))]
            states = [s for s in (await QueueReads(redis, keys).states(ids)).values() if s]
            worker.stop()
            await asyncio.wait_for(worker_task, 30)
    finally:
        await client.close()
        await fake.close()
        await redis.aclose()
        server.stop()

    pickups = [(s.started_at or 0) - (s.enqueued_at or 0) for s in states]
    sample = [s.timings["sample"] for s in states]
    busy = [(s.posted_at or 0) - (s.started_at or 0) for s in states]
    overhead = [(b - smp) / smp for b, smp in zip(busy, sample, strict=True)]
    print(f"bench/latency.py  jobs={jobs}+{sequential} steps={steps} size=64x64 "
          f"device={placement.describe()}")
    print(line(f"interaction -> ack ({jobs} concurrent)", acks))
    print(line("enqueue -> pickup (idle worker)", pickups))
    print(line("sampling per job", sample))
    print(line("worker time per job (pickup->post)", busy))
    print(f"{'non-sampling overhead / sampling':<34} p50 {percentile(overhead, 50) * 100:7.1f} %"
          f"    mean {statistics.mean(overhead) * 100:7.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bench(args.jobs, args.sequential, args.steps, args.device))


if __name__ == "__main__":
    main()
