"""The capacity model's measured inputs, and the model itself: where the first limit is at 1×,
10×, 100× and 1,000× today's one machine.

Measured here, on real parts (the real bot on the fake Discord, a real worker with the tiny
model on this CPU, a real redis-server), with the production config's queue and worker
settings (2 s blocking take, 60 s lease, live progress on):
- Redis per job: commands (by name), bytes in and out, the server's CPU, and the memory a
  posted job keeps (for `queue.result_ttl_s`), from INFO deltas over N `/pony` drawn and
  posted, less the background the processes make while idle (measured first, per second);
- the idle background: Redis commands per second of one bot and of one worker;
- Discord REST per job: requests on interaction endpoints (the token's own, outside the
  global limit) and on the bot token (inside Discord's global 50 requests/s).
Taken from elsewhere, and printed with where from:
- images per second per GPU (`--images-per-s-per-gpu`): no GPU ran bench/throughput.py here
  yet; the default is a published A100 figure scaled to our 25 steps (see the README's
  capacity section); pass what `bench/throughput.py --device cuda` prints on your GPU;
- the bot's CPU per `/pony` (`--bot-ms-per-job`): bench/ack_path.py's worst figure;
- servers per request rate (`--requests-per-server-hour`): an assumption, say yours.
Shared machines are noisy: rerun on a quiet one for figures to quote exactly.

    python bench/capacity.py [--jobs 60] [--idle-s 20] [--images-per-s-per-gpu 1.25]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from redis.asyncio import Redis

from ponybot_cli.redis_server import RedisServer
from ponybot_core.config import LoadedConfig, QueueConfig, Secrets
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_testkit import world as t
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.tiny_models import build_tiny_pipeline

# Discord's limits (docs/topics/rate-limits.md and docs/events/gateway.mdx of
# discord/discord-api-docs): 50 requests/s per bot token, interaction endpoints outside it;
# at most 2,500 servers per shard.
DISCORD_GLOBAL_PER_S = 50
GUILDS_PER_SHARD = 2500
REDIS_MAXCLIENTS = 10_000  # redis.conf's default
BOT_CONNECTIONS = 32  # ponybot_core/redis_client.py: each bot process's pool
WORKER_CONNECTIONS = 2  # a blocking take and everything else


@dataclass
class Snapshot:
    commands: Counter[str]
    usec: float
    net_in: int
    net_out: int
    cpu_s: float
    memory: int
    rest: list[tuple[str, str, int]]
    at: float


async def snapshot(redis: Redis, fake: FakeDiscord) -> Snapshot:
    info: dict[str, Any] = await redis.info("everything")
    stats = {k.removeprefix("cmdstat_"): v for k, v in info.items()
             if k.startswith("cmdstat_")}
    return Snapshot(commands=Counter({name: int(s["calls"]) for name, s in stats.items()}),
                    usec=sum(float(s["usec"]) for s in stats.values()),
                    net_in=int(info["total_net_input_bytes"]),
                    net_out=int(info["total_net_output_bytes"]),
                    cpu_s=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                    memory=int(info["used_memory"]), rest=list(fake.requests),
                    at=time.perf_counter())


@dataclass
class Rate:
    """What happened between two snapshots, per unit (a job, or a second)."""

    commands: dict[str, float]
    usec: float
    net_in: float
    net_out: float
    cpu_s: float
    memory: float
    interaction_calls: float
    bot_token_calls: float

    @property
    def total(self) -> float:
        return sum(self.commands.values())


def interaction_endpoint(path: str) -> bool:
    # An interaction's callback and its token's webhook (edit the original, follow-ups).
    return path.startswith(("/interactions/", f"/webhooks/{t.APPLICATION_ID}/"))


def between(a: Snapshot, b: Snapshot, per: float) -> Rate:
    commands = b.commands - a.commands
    commands.pop("info", None)  # the snapshots' own
    rest = b.rest[len(a.rest):]
    via_interaction = sum(1 for _, path, _ in rest if interaction_endpoint(path))
    return Rate(commands={k: v / per for k, v in commands.items()},
                usec=(b.usec - a.usec) / per, net_in=(b.net_in - a.net_in) / per,
                net_out=(b.net_out - a.net_out) / per, cpu_s=(b.cpu_s - a.cpu_s) / per,
                memory=(b.memory - a.memory) / per, interaction_calls=via_interaction / per,
                bot_token_calls=(len(rest) - via_interaction) / per)


def less(job: Rate, background: Rate, seconds: float, jobs: int) -> Rate:
    """Per job, without the background the processes would have made in that time anyway."""
    f = seconds / jobs
    names = set(job.commands) | set(background.commands)
    return Rate(commands={n: max(0.0, job.commands.get(n, 0) - background.commands.get(n, 0) * f)
                          for n in names},
                usec=max(0.0, job.usec - background.usec * f),
                net_in=max(0.0, job.net_in - background.net_in * f),
                net_out=max(0.0, job.net_out - background.net_out * f),
                cpu_s=max(0.0, job.cpu_s - background.cpu_s * f), memory=job.memory,
                interaction_calls=job.interaction_calls, bot_token_calls=job.bot_token_calls)


@dataclass
class Measured:
    per_job: Rate  # a queue that keeps up
    backlog: Rate  # per job of a burst that waits behind the rest
    bot_idle: Rate
    worker_idle: Rate
    jobs: int
    seconds: float
    kept: dict[str, float]  # bytes per job by how long Redis keeps them


async def kept_bytes(redis: Redis, jobs: int) -> dict[str, float]:
    """MEMORY USAGE of every key, per job, by lifetime: what a posted job leaves for days
    (its buttons' data), what goes within the hour (tokens), what has no TTL (bounded)."""
    kept: Counter[str] = Counter()
    async for key in redis.scan_iter(count=1000):
        ttl = await redis.ttl(key)
        size = int(await redis.memory_usage(key, samples=0) or 0)
        kept["no TTL" if ttl < 0 else "≤ 1 h" if ttl <= 3600 else "days"] += size
    return {k: v / jobs for k, v in kept.items()}


async def measure(jobs: int, idle_s: float) -> Measured:
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
    for i in range(jobs):  # one user per command: per-user caps stay out of it
        fake.add_user(t.USER_ID + i, name=f"bench{i}")
    await fake.start()
    # Production's queue and worker settings (lease, blocking take, progress), the tiny model.
    config = t.tiny_config(pipeline, fake, worker={"device": "cpu"}, queue={})
    settings = LoadedConfig(config=config, secrets=Secrets(DISCORD_TOKEN=t.BOT_TOKEN,
                            REDIS_URL=server.url), path=work / "config.toml")
    stats = Redis.from_url(server.url)
    models = ModelCache(config, base_dir=work, placement=choose_placement("cpu"))
    await models.get("tiny")
    use_endpoints(config.discord)
    client = await logged_in_client(t.BOT_TOKEN)
    worker = Worker(settings, Redis.from_url(server.url), client, name="bench", models=models)
    try:
        async with t.running_bot(settings, fake):
            # 1. The bot alone, idle (a bench may wait on the clock).
            a = await snapshot(stats, fake)
            await asyncio.sleep(idle_s)
            b = await snapshot(stats, fake)
            bot_idle = between(a, b, b.at - a.at)
            # 2. Bot and worker, idle.
            worker_task = asyncio.create_task(worker.run())
            await asyncio.sleep(3)  # past the worker's start-up (heartbeat, inventory)
            a = await snapshot(stats, fake)
            await asyncio.sleep(idle_s)
            b = await snapshot(stats, fake)
            both_idle = between(a, b, b.at - a.at)
            worker_idle = Rate(
                commands={n: both_idle.commands.get(n, 0) - bot_idle.commands.get(n, 0)
                          for n in set(both_idle.commands) | set(bot_idle.commands)},
                usec=both_idle.usec - bot_idle.usec, net_in=both_idle.net_in - bot_idle.net_in,
                net_out=both_idle.net_out - bot_idle.net_out,
                cpu_s=both_idle.cpu_s - bot_idle.cpu_s, memory=0.0,
                interaction_calls=0.0, bot_token_calls=0.0)
            # 3. A queue that keeps up: one /pony at a time, each posted before the next.
            async def pony(i: int) -> None:
                itx = await fake.invoke("pony", {"tags": f"pony, solo, bench {i}"},
                                        guild_id=t.GUILD_ID, channel_id=t.CHANNEL_ID,
                                        user_id=t.USER_ID + i)
                await itx.wait_response(timeout=10)

            async def posted(count: int) -> None:
                def done() -> bool:
                    return worker.jobs_done >= count

                await fake.wait_for(done, timeout=600)

            steady = jobs // 2
            a = await snapshot(stats, fake)
            for i in range(steady):
                await pony(i)
                await posted(i + 1)
            b = await snapshot(stats, fake)
            seconds = b.at - a.at
            per_job = less(between(a, b, steady), both_idle, seconds, steady)
            # 4. A backlog: the other half as fast as the bot answers, so each waits behind
            #    the rest and the positions loop keeps every waiting message's place true.
            burst = jobs - steady
            a = await snapshot(stats, fake)
            for first in range(steady, jobs, 20):  # 20 at a time: within the bot's 32
                await asyncio.gather(*(pony(i) for i in range(first, min(jobs, first + 20))))
            await posted(jobs)
            b = await snapshot(stats, fake)
            backlog = less(between(a, b, burst), both_idle, b.at - a.at, burst)
            kept = await kept_bytes(stats, jobs)
            worker.stop()
            await asyncio.wait_for(worker_task, 30)
    finally:
        await client.close()
        await fake.close()
        await stats.aclose()
        server.stop()
    return Measured(per_job=per_job, backlog=backlog, bot_idle=bot_idle,
                    worker_idle=worker_idle, jobs=jobs, seconds=seconds, kept=kept)


def model(m: Measured, args: argparse.Namespace) -> None:
    job = m.per_job
    ttl = QueueConfig().result_ttl_s
    redis_s_per_job = job.cpu_s
    ceiling = 1 / redis_s_per_job if redis_s_per_job else math.inf
    print(f"\nModel inputs: {args.images_per_s_per_gpu:g} images/s per GPU "
          f"({args.gpu_source}); {args.images_per_job:g} images per job (config's count); "
          f"bot CPU {args.bot_ms_per_job:g} ms per /pony (bench/ack_path.py); "
          f"{args.requests_per_server_hour:g} /pony per server per busy hour (assumption); "
          f"Redis node {args.redis_memory_gb:g} GB; posted jobs kept {ttl / 86400:g} days")
    print(f"One Redis core: ~{ceiling:,.0f} jobs/s from its CPU per job "
          f"({redis_s_per_job * 1e3:.3f} ms; commands alone {job.usec / 1e3:.3f} ms)")
    header = (f"{'scale':>6} {'GPUs':>6} {'jobs/s':>8} {'Redis ops/s':>12} {'Redis CPU':>10} "
              f"{'net MB/s':>9} {'memory GB':>10} {'TTL fits':>9} {'conns':>7} {'bot cores':>10} "
              f"{'token req/s':>12} {'servers':>10} {'shards':>7}  first limit")
    print(header)
    for scale in (1, 10, 100, 1000):
        gpus = scale
        jobs_s = gpus * args.images_per_s_per_gpu / args.images_per_job
        bot_processes = max(1, math.ceil(jobs_s * args.bot_ms_per_job / 1000 / 0.5))
        ops = (jobs_s * job.total + gpus * m.worker_idle.total
               + bot_processes * m.bot_idle.total)
        cpu = (jobs_s * job.cpu_s + gpus * m.worker_idle.cpu_s
               + bot_processes * m.bot_idle.cpu_s)
        net = jobs_s * (job.net_in + job.net_out) / 1e6
        memory = jobs_s * ttl * m.kept.get("days", 0.0) / 1e9
        # The result lifetime that keeps the posted jobs within the node's memory.
        fits_days = args.redis_memory_gb * 1e9 / (jobs_s * m.kept.get("days", 1.0)) / 86400
        connections = gpus * WORKER_CONNECTIONS + bot_processes * BOT_CONNECTIONS
        bot_cores = jobs_s * args.bot_ms_per_job / 1000
        token = jobs_s * job.bot_token_calls
        servers = jobs_s * 3600 / args.requests_per_server_hour
        shards = math.ceil(servers / GUILDS_PER_SHARD)
        use = {"Redis CPU (one core)": cpu,
               f"Redis memory ({args.redis_memory_gb:g} GB)": memory / args.redis_memory_gb,
               "Redis connections (maxclients)": connections / REDIS_MAXCLIENTS,
               "one bot process's CPU (shard across processes)": bot_cores,
               "Discord's global 50 req/s (bot token)": token / DISCORD_GLOBAL_PER_S}
        first, share = max(use.items(), key=lambda kv: kv[1])
        print(f"{scale:>5}× {gpus:>6,} {jobs_s:>8,.1f} {ops:>12,.0f} {cpu * 100:>9.1f}% "
              f"{net:>9.2f} {memory:>10,.1f} {fits_days:>7.2f} d {connections:>7,} "
              f"{bot_cores:>10.2f} "
              f"{token:>12.2f} {servers:>10,.0f} {shards:>7,}  {first} at {share * 100:.0f}%")
    print("(memory: posted jobs at that rate sustained for queue.result_ttl_s; shards: the "
          "fewest Discord allows, 2,500 servers each; bot processes as many as keep each "
          "under half a core)")


def report(m: Measured) -> None:
    job = m.per_job
    print(f"bench/capacity.py  {m.jobs // 2} /pony one at a time in {m.seconds:.1f} s, then "
          f"{m.jobs - m.jobs // 2} at once (tiny model, CPU; production queue/worker settings)")
    print(f"Redis per job, a queue that keeps up: {job.total:.1f} commands (those inside Lua "
          f"scripts included), {job.net_in:,.0f} B in, {job.net_out:,.0f} B out, "
          f"{job.cpu_s * 1e3:.3f} ms server CPU "
          f"({job.usec / 1e3:.3f} ms executing commands); used_memory +{job.memory:,.0f} B "
          "per job just after posting")
    print("  MEMORY USAGE per posted job by lifetime: "
          + ", ".join(f"{k} {v:,.0f} B" for k, v in sorted(m.kept.items())))
    top = sorted(job.commands.items(), key=lambda kv: -kv[1])
    print("  by command: " + ", ".join(f"{name} {n:.1f}" for name, n in top if n >= 0.05))
    extra = m.backlog.total - job.total
    print(f"Per job of a burst of {m.jobs - m.jobs // 2} (each waits behind the rest): "
          f"{m.backlog.total:.1f} commands, {m.backlog.cpu_s * 1e3:.3f} ms server CPU; the "
          f"{extra:+.1f} commands are the positions loop keeping waiting messages true ("
          + ", ".join(f"{n} {m.backlog.commands.get(n, 0) - job.commands.get(n, 0):+.1f}"
                      for n in ("exists", "hexists", "hmget", "hget")) + ")")
    for name, idle in (("Redis idle with one bot", m.bot_idle),
                       ("one idle worker adds", m.worker_idle)):
        print(f"{name}: {idle.total:.2f} commands/s, "
              f"{idle.cpu_s * 1e3:.2f} ms CPU/s ("
              + ", ".join(f"{n} {v:.2f}" for n, v in sorted(idle.commands.items(),
                                                            key=lambda kv: -kv[1]) if v >= 0.01)
              + ")")
    print(f"Discord REST per job: {job.interaction_calls:.2f} on interaction endpoints "
          f"(outside the global limit), {job.bot_token_calls:.2f} with the bot token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--images-per-s-per-gpu", type=float, default=1.25)
    parser.add_argument("--gpu-source", default="published A100 SD 1.5 figure at 25 steps")
    parser.add_argument("--images-per-job", type=float, default=1.0)
    parser.add_argument("--bot-ms-per-job", type=float, default=3.2)
    parser.add_argument("--requests-per-server-hour", type=float, default=1.0)
    parser.add_argument("--redis-memory-gb", type=float, default=32.0)
    args = parser.parse_args()
    measured = asyncio.run(measure(args.jobs, args.idle_s))
    report(measured)
    model(measured, args)


if __name__ == "__main__":
    main()
