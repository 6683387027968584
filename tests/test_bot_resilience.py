"""The bot stays up and says what is wrong when its dependencies are not there."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from ponybot_core.keys import Keys
from ponybot_core.queue import JobStatus, QueueReads
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, USER_ID, running_bot


async def test_unreachable_redis_is_reported_and_the_bot_keeps_running(fake, settings, redis):
    dead = settings.model_copy(update={"secrets": settings.secrets.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0"})})
    async with running_bot(dead, fake):
        for _ in range(2):
            itx = await fake.invoke("pony", {"tags": "pony"}, guild_id=GUILD_ID,
                                    channel_id=CHANNEL_ID, user_id=USER_ID)
            await itx.wait_response(timeout=5)
            assert itx.ephemeral
            assert "queue is unavailable" in itx.original.content


def test_the_bot_process_never_imports_the_ml_stack():
    code = (
        "import sys, bot.__main__, bot.app, cogs.pony, ponybot_request.jobs\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'spandrel')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


async def test_a_job_whose_answer_failed_is_taken_back_out_of_the_queue(fake, bot, redis):
    """The user saw "the application did not respond", not a queued message: nothing may run
    for them behind their back."""
    fake.inject("POST", r"^/interactions/\d+/[^/]+/callback$", 404)
    await fake.invoke("pony", {"tags": "pony"}, guild_id=GUILD_ID, channel_id=CHANNEL_ID,
                      user_id=USER_ID)
    keys = Keys()
    reads = QueueReads(redis, keys)
    for _ in range(200):
        ids = [keys.job_id(k) async for k in redis.scan_iter(match=keys.job("*"))]
        states = [s for s in (await reads.states(ids)).values() if s]
        if states and states[0].status is JobStatus.CANCELLED:
            break
        await asyncio.sleep(0.02)
    assert [s.status for s in states] == [JobStatus.CANCELLED]
    snapshot = await reads.snapshot(all_guilds=True)
    assert snapshot.queued == [] and snapshot.running == []
