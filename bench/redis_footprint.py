"""What Redis holds per job and per active user, and what is left once the lifetimes run out.

On a real redis-server this bench starts, jobs go through the real queue code (enqueue,
record the queued message, take, post / cancel / dead-letter) and a user saves `/settings`
through `bot.saved_settings`. For each kind it prints bytes per job two ways: MEMORY USAGE of the
job's own keys (hash, token key) and the INFO used_memory delta over all jobs divided by
their number (which also counts each job's share of waiting lists, sets and the stream).
Then the lifetimes are set to a few seconds, a mixed run ends, and the bench waits (on the
clock: a bench may) until Redis has expired them, and prints what is left.

    python bench/redis_footprint.py [--jobs 500] [--results 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from bot import saved_settings
from bot.saved_settings import SavedSettings
from ponybot_cli.redis_server import RedisServer
from ponybot_core.config import CANCELLED_TTL_S, DEAD_TTL_S, QueueConfig, Sampler
from ponybot_core.job import Job
from ponybot_core.keys import Keys
from ponybot_core.queue import Consumer, Producer

KEYS = Keys("bench")
GUILD = 1_000_000_000_000_001
RESULT_TTL_S = QueueConfig().result_ttl_s
# A real interaction token is about this long; tags and prompts as a keen user writes them.
TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTpxd2VydHl1aW9wYXNkZmdoamts" * 3
TAGS = ("twilight sparkle, rainbow dash, fluttershy, rarity, applejack, pinkie pie, unicorn, "
        "pegasus, earth pony, smiling, looking at viewer, outdoors, ponyville, sunset, "
        "detailed background, artist:foo, safe, solo focus, happy, cute")
PROMPT = "score_9, score_8_up, " + TAGS + ", masterpiece, best quality, highly detailed"
NEGATIVE = ("explicit, questionable, lowres, bad anatomy, bad hands, text, error, missing "
            "fingers, extra digit, cropped, worst quality, low quality, jpeg artifacts, "
            "signature, watermark, blurry, grimdark, blood")


def job(i: int, user: int | None = None) -> Job:
    return Job(application_id=1_000_000_000_000_001, interaction_id=1_300_000_000_000_000 + i,
               interaction_token=TOKEN, guild_id=GUILD, channel_id=1_100_000_000_000_001,
               user_id=user if user is not None else 1_200_000_000_000_000 + i,
               model_id="pony-diffusion-v4", tags=TAGS, negative_tags="grimdark, blood",
               prompt=PROMPT, negative_prompt=NEGATIVE, seed=1_234_567_890 + i, steps=25,
               cfg=7.5, sampler=Sampler.DDIM, width=512, height=512, count=4,
               attachment_limit=10 * 1024 * 1024)


class Queue:
    def __init__(self, redis: Redis, *, posted_s: int, cancelled_s: int, dead_s: int) -> None:
        self.redis = redis
        self.producer = Producer(redis, KEYS, result_ttl_s=posted_s,
                                 cancelled_ttl_s=cancelled_s, dead_ttl_s=dead_s)
        self.consumer = Consumer(redis, KEYS, "bench-worker", lease_s=60,
                                 result_ttl_s=posted_s, cancelled_ttl_s=cancelled_s,
                                 dead_ttl_s=dead_s)

    async def queued(self, j: Job, message_id: int) -> None:
        """Enqueued and answered, as `/pony` leaves it."""
        await self.producer.enqueue(j)
        await self.producer.record_message(j.id, message_id, position=1)

    async def post(self) -> None:
        [d] = await self.consumer.take(count=1)
        await d.posting()
        await d.posted(1_400_000_000_000_000, worker_seconds=4.2,
                       timings={"load": 0.01, "sample": 3.9, "encode": 0.2, "post": 0.3})

    async def give_up(self) -> None:
        [d] = await self.consumer.take(count=1)
        await d.give_up("the model 'pony-diffusion-v4' could not be loaded")


async def used(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def usage(redis: Redis, key: str) -> int:
    return int(await redis.memory_usage(key, samples=0) or 0)


async def job_keys(redis: Redis) -> int:
    n = 0
    for pattern in (f"{KEYS.prefix}:job:*", f"{KEYS.prefix}:token:*"):
        async for _ in redis.scan_iter(match=pattern, count=1000):
            n += 1
    return n


async def fresh(redis: Redis) -> int:
    """An empty Redis with the queue's stream and group made (as any running queue has)."""
    await redis.flushall()
    await Queue(redis, posted_s=60, cancelled_s=60, dead_s=60).consumer.take(count=1)
    return await used(redis)


def row(what: str, own: int, delta: float, kept: str) -> None:
    print(f"  {what:<34} {own:>7,} B {delta:>9,.0f} B   {kept}")


async def per_job(redis: Redis, n: int) -> int:
    print(f"\nBytes per job ({n} jobs each; own keys = MEMORY USAGE of hash + token key, "
          "delta = INFO used_memory / jobs)")
    print(f"  {'':<34} {'own keys':>9} {'delta':>11}   kept")
    q = Queue(redis, posted_s=RESULT_TTL_S, cancelled_s=CANCELLED_TTL_S, dead_s=DEAD_TTL_S)

    async def own(j: Job) -> int:
        return await usage(redis, KEYS.job(j.id)) + await usage(redis, KEYS.token(j.id))

    base = await fresh(redis)
    jobs = [job(i) for i in range(n)]
    for i, j in enumerate(jobs):
        await q.queued(j, 1_500_000_000_000_000 + i)
    row("queued", await own(jobs[0]), (await used(redis) - base) / n, "while it waits")
    for j in jobs:
        await q.producer.cancel(j.id)
    cancelled = await own(jobs[0])
    row("cancelled (or taken back)", cancelled, (await used(redis) - base) / n,
        f"TTL {await redis.ttl(KEYS.job(jobs[0].id))} s (was {RESULT_TTL_S} s)")

    base = await fresh(redis)
    jobs = [job(i) for i in range(n)]
    for i, j in enumerate(jobs):
        await q.queued(j, 1_500_000_000_000_000 + i)
        await q.post()
    posted = await own(jobs[0])
    row("posted", posted, (await used(redis) - base) / n,
        f"TTL {await redis.ttl(KEYS.job(jobs[0].id))} s (result buttons)")

    base = await fresh(redis)
    jobs = [job(i) for i in range(n)]
    for i, j in enumerate(jobs):
        await q.queued(j, 1_500_000_000_000_000 + i)
        await q.give_up()
    row("dead-lettered", await own(jobs[0]), (await used(redis) - base) / n,
        f"TTL {await redis.ttl(KEYS.job(jobs[0].id))} s (+ one dead-letter entry)")

    print(f"\n  {n} × (/pony + Cancel) holds {n * cancelled / 1024:,.0f} KiB for "
          f"{CANCELLED_TTL_S // 60} min; before, the same for {RESULT_TTL_S // 86400} days "
          f"({RESULT_TTL_S // CANCELLED_TTL_S}× the byte-hours)")
    return posted


async def per_user(redis: Redis, results: int) -> None:
    print(f"\nBytes per active user (saved /settings, {results} posted results)")
    q = Queue(redis, posted_s=RESULT_TTL_S, cancelled_s=CANCELLED_TTL_S, dead_s=DEAD_TTL_S)
    user = 1_200_000_000_000_999
    base = await fresh(redis)
    key = KEYS.user_settings(GUILD, user)
    await saved_settings.save(redis, key, SavedSettings(model="pony-diffusion-v4", size="portrait",
                                             steps=30, cfg=7.0, count=4, negative=NEGATIVE,
                                             upscale=True),
                        index=KEYS.saved_settings_index(GUILD))
    settings = await used(redis) - base
    print(f"  saved settings: {await usage(redis, key):,} B own hash, {settings:,} B delta "
          "(with its server's index entry); kept while the bot is in the server")
    for i in range(results):
        await q.queued(job(i, user=user), 1_500_000_000_000_000 + i)
        await q.post()
    total = await used(redis) - base
    print(f"  settings + {results} results: {total:,} B delta ({total / 1024:,.1f} KiB), "
          f"{(total - settings) / results:,.0f} B per result, each kept "
          f"{RESULT_TTL_S // 86400} days")


async def expiry(redis: Redis, n: int) -> None:
    lifetimes = {"posted_s": 3, "cancelled_s": 1, "dead_s": 2}
    print(f"\nAfter the lifetimes run out ({n} jobs: a third each posted, cancelled, dead; "
          f"lifetimes {lifetimes} for the bench)")
    q = Queue(redis, **lifetimes)
    base = await fresh(redis)
    for i in range(n):
        j = job(i)
        await q.queued(j, 1_500_000_000_000_000 + i)
        if i % 3 == 0:
            await q.post()
        elif i % 3 == 1:
            await q.producer.cancel(j.id)
        else:
            await q.give_up()
    held, keys = await used(redis) - base, await job_keys(redis)
    print(f"  ended:   {held:>10,} B over the empty queue, {keys} job keys")
    started = time.monotonic()
    for _ in range(300):  # Redis expires keys in its own time: look every 0.2 s, for 60 s
        if not (keys := await job_keys(redis)):
            break
        await asyncio.sleep(0.2)
    left = await used(redis) - base
    print(f"  expired: {left:>10,} B over the empty queue, {keys} job keys "
          f"({time.monotonic() - started:.1f} s after the last ending)")
    without_ttl = []
    async for raw in redis.scan_iter(match=f"{KEYS.prefix}:*", count=1000):
        if await redis.ttl(raw) == -1:
            without_ttl.append(f"{raw.decode()} ({await usage(redis, raw):,} B)")
    print(f"  keys without a TTL: {', '.join(sorted(without_ttl))}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--results", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        redis = Redis.from_url(server.url)
        try:
            print(f"redis-server {(await redis.info('server'))['redis_version']}")
            await per_job(redis, args.jobs)
            await per_user(redis, args.results)
            await expiry(redis, args.jobs)
        finally:
            await redis.aclose()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
