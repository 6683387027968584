"""What one `/pony` costs the bot before it answers, on real parts: real discord.py against the
fake Discord, a real redis-server, a live worker as its heartbeat says (no worker runs: this is
the bot's side alone).

Prints
- the Redis round trips of one warm `/pony` before its answer, and after it (each round trip
  with the commands it carried), counted where redis-py writes them
  (ponybot_testkit.round_trips);
- the bot's CPU per `/pony`: the bot runs in a process of its own (as in production), and its
  CPU time over N sequential commands is read from the OS, so the fake Discord's and this
  script's share stays out;
- interaction -> ack for bursts of concurrent `/pony` (the first burst also grows the Redis
  connection pool; the later ones are what a running bot sees);
- with --profile K: the functions the bot spent its CPU in over K sequential commands (cProfile
  in the bot's process; its overhead inflates the absolute figures, not the ranking).

    python bench/ack_path.py [--sequential 200] [--jobs 50] [--bursts 3] [--profile 100]

Run it on a quiet machine (it prints the load average): every figure but the round trips is
CPU-bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import signal
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from redis.asyncio import Redis

from ponybot_cli.redis_server import RedisServer
from ponybot_core.config import LoadedConfig, Secrets
from ponybot_core.heartbeat import WorkerHeartbeat, publish_heartbeat
from ponybot_core.keys import Keys
from ponybot_testkit import world as t
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.round_trips import recording

USERS = 64  # one user per concurrent command: per-user caps stay out of it
BATCH = 50


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, values: list[float]) -> str:
    return (f"{name:<36} p50 {percentile(values, 50) * 1000:8.2f} ms   "
            f"p99 {percentile(values, 99) * 1000:8.2f} ms   (n={len(values)})")


# --- the bot, in a process of its own ---------------------------------------------------------


def bot_process(settings: LoadedConfig, profile_to: str) -> None:
    """The bot as `python -m bot` runs it (logging included), against the fake. SIGUSR1 starts
    cProfile, SIGUSR2 stops it and writes the stats to `profile_to`."""
    from bot.app import PonyBot
    from ponybot_core.discord_endpoints import use_endpoints
    from ponybot_core.logs import setup_logging
    from ponybot_core.redis_client import bot_redis

    os.environ["PONYBOT_LOG_LEVEL"] = "INFO"
    setup_logging("bot")
    profiler = cProfile.Profile()

    def stop_profile() -> None:
        profiler.disable()
        profiler.dump_stats(profile_to)

    async def run() -> None:
        use_endpoints(settings.config.discord)
        assert settings.redis_url
        bot = PonyBot(settings, bot_redis(settings.redis_url))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
        loop.add_signal_handler(signal.SIGUSR2, stop_profile)
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(bot.close()))
        async with bot:
            await bot.start(t.BOT_TOKEN)

    with contextlib.suppress(Exception):
        asyncio.run(run())


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds the process has run, all threads: the scheduler's nanoseconds on Linux
    (cpu_times counts 10 ms ticks, too coarse for a batch of commands)."""
    try:
        tasks = Path(f"/proc/{process.pid}/task")
        return sum(int((t / "schedstat").read_text().split()[0])
                   for t in tasks.iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        times = process.cpu_times()
        return times.user + times.system


# --- the bench --------------------------------------------------------------------------------


async def pony(fake: FakeDiscord, i: int) -> float:
    start = time.perf_counter()
    itx = await fake.invoke("pony", {"tags": f"twilight sparkle, unicorn, solo, seed {i}"},
                            guild_id=t.GUILD_ID, channel_id=t.CHANNEL_ID,
                            user_id=t.USER_ID + i % USERS)
    await itx.wait_response(timeout=10)
    if itx.ephemeral:
        raise RuntimeError(f"/pony was refused: {itx.original and itx.original.content}")
    return time.perf_counter() - start


async def worker_alive(redis: Redis, keys: Keys) -> None:
    """A live worker that can draw every model, as its heartbeat says."""
    beat = WorkerHeartbeat(name="gpu-a", host="bench", device="cuda:0", serves=["tiny", "tiny-v2"],
                           at=time.time())
    await publish_heartbeat(redis, keys, beat, ttl_s=3600)


async def round_trips(settings: LoadedConfig, fake: FakeDiscord) -> None:
    """One warm /pony with the bot in this process, its round trips recorded."""
    with recording() as rec:
        async with t.running_bot(settings, fake):
            await pony(fake, 0)  # the first loads the Lua scripts and meets the workers
            for first in rec.answered():
                await first.finished()
            rec.clear()
            await pony(fake, 1)
            [one] = rec.answered()
            await one.finished()
    before, after = one.before_answer(), one.after_answer()
    print(f"Redis round trips before the answer: {len(before)}")
    for trip in before:
        print(f"    {' '.join(trip)}")
    print(f"Redis round trips after the answer:  {len(after)}")
    for trip in after:
        print(f"    {' '.join(trip)}")


async def bench(sequential: int, jobs: int, bursts: int, profile: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="ponyack-"))
    server = RedisServer(work / "redis")
    server.start()
    fake = t.fake_world()
    for i in range(USERS):
        fake.add_user(t.USER_ID + i, name=f"bench{i}")
    await fake.start()
    config = t.tiny_config(work / "no-model-needed", fake)
    secrets = Secrets.model_validate({"DISCORD_TOKEN": t.BOT_TOKEN, "REDIS_URL": server.url})
    settings = LoadedConfig(config=config, secrets=secrets, path=work / "config.toml")
    keys = Keys(config.redis.key_prefix)
    redis = Redis.from_url(server.url)
    profile_to = str(work / "bot.prof")
    child = None
    try:
        await worker_alive(redis, keys)
        load = os.getloadavg()
        print(f"bench/ack_path.py  sequential={sequential} jobs={jobs}x{bursts} "
              f"cores={os.cpu_count()} load={load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        await round_trips(settings, fake)

        child = multiprocessing.get_context("spawn").Process(
            target=bot_process, args=(settings, profile_to), daemon=True)
        child.start()
        await fake.wait_for_bot(timeout=60)
        await fake.wait_for_commands(timeout=60)
        assert child.pid is not None
        bot = psutil.Process(child.pid)
        print(f"bot process: pid {child.pid}")
        before = cpu_s(bot)
        first = await pony(fake, 0)
        await asyncio.sleep(0.2)  # its follow-ups
        print(f"{'first /pony after the start':<36} ack {first * 1000:8.2f} ms   bot CPU "
              f"{(cpu_s(bot) - before) * 1000:.2f} ms")
        for i in range(5):  # warm: scripts loaded, caches filled, code paths run once
            await pony(fake, i)

        # Batches, each timed on its own: the median and the quietest batch say more than one
        # total on a machine that other work shares.
        batches = []
        for b in range(max(1, sequential // BATCH)):
            before = cpu_s(bot)
            for i in range(BATCH):
                await pony(fake, b * BATCH + i)
            batches.append((cpu_s(bot) - before) / BATCH)
        median = statistics.median(batches)
        print(f"{'bot CPU per /pony (sequential)':<36} median {median * 1000:6.2f} ms   "
              f"min {min(batches) * 1000:6.2f} ms   ({len(batches)} batches of {BATCH})")
        # The jobs stay queued (no worker takes them): a bot that deleted them would tell
        # their users they were lost, in the middle of the next burst.
        acks: list[list[float]] = []
        harness = psutil.Process()
        for b in range(bursts):
            cpu_before, harness_before = cpu_s(bot), cpu_s(harness)
            acks.append(list(await asyncio.gather(*(pony(fake, b * jobs + i)
                                                    for i in range(jobs)))))
            cpu_burst = (cpu_s(bot) - cpu_before) / jobs
            cpu_harness = (cpu_s(harness) - harness_before) / jobs
            print(line(f"interaction -> ack, burst {b + 1} ({jobs} at once)", acks[-1])
                  + f"  CPU/cmd: bot {cpu_burst * 1000:.2f} ms, fake Discord "
                  f"{cpu_harness * 1000:.2f} ms")
        warm = [a for burst in acks[1:] for a in burst] or acks[0]
        print(line("interaction -> ack, warm bursts", warm))

        if profile:
            os.kill(child.pid, signal.SIGUSR1)
            await asyncio.sleep(0.2)
            for i in range(profile):
                await pony(fake, i)
            os.kill(child.pid, signal.SIGUSR2)
            await asyncio.sleep(0.5)
            out = io.StringIO()
            stats = pstats.Stats(profile_to, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(r"(bot|cogs|ponybot_\w+)/", 40)
            print(f"cProfile of the bot over {profile} sequential /pony (seconds are totals):")
            print(out.getvalue())
    finally:
        if child is not None and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
            child.join(10)
            if child.is_alive():
                child.kill()
        await fake.close()
        await redis.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bench(args.sequential, args.jobs, args.bursts, args.profile))


if __name__ == "__main__":
    main()
