"""The worker batches compatible jobs into one pipeline call without mixing them up, and a
cancel inside a batch cancels that job only."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from ponybot_core.keys import Keys
from ponybot_testkit.world import CHANNEL_ID, USER_ID

pytestmark = pytest.mark.usefixtures("bot")


def batching(settings, max_batch: int = 4):
    worker = settings.config.worker.model_copy(update={"max_batch": max_batch})
    return settings.model_copy(update={"config": settings.config.model_copy(
        update={"worker": worker})})


async def pony(fake, **options):
    options.setdefault("tags", "fluttershy, bunny")
    itx = await fake.invoke("pony", options, channel_id=CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def states(redis) -> dict[str, dict[bytes, bytes]]:
    return {k.decode(): await redis.hgetall(k) for k in await redis.keys(Keys().job("*"))}


async def test_compatible_jobs_share_one_call_and_each_gets_its_own_images(
        fake, redis, settings, start_worker):
    jobs = [await pony(fake, tags=tags, count=count) for tags, count in
            [("fluttershy, bunny", 2), ("rarity, gems", 1), ("spike, dragon", 1)]]
    await start_worker(settings_=batching(settings))

    await fake.wait_for(lambda: all(j.original.attachments for j in jobs), timeout=60)

    sample_times = {s[b"sample_s"] for s in (await states(redis)).values()}
    assert len(sample_times) == 1  # one pipeline call drew all three jobs
    for itx, tags in zip(jobs, ["fluttershy", "rarity", "spike"], strict=True):
        message = itx.original
        fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
        first_seed = int(fields["Seed"].split("–")[0])
        for offset, attachment in enumerate(message.attachments):
            parameters = Image.open(io.BytesIO(attachment.data)).text["parameters"]
            assert tags in parameters.split("\n")[0]
            assert f"Seed: {first_seed + offset}," in parameters


async def test_cancelling_one_job_of_a_batch_leaves_the_others_running(
        fake, redis, settings, start_worker):
    keep_a, doomed, keep_b = [await pony(fake, steps=40) for _ in range(3)]
    await start_worker(settings_=batching(settings))
    for _ in range(1000):
        if all(s.get(b"status") == b"running" for s in (await states(redis)).values()):
            break
        await asyncio.sleep(0.01)
    [doomed_id] = [k.rsplit(":", 1)[1] for k, s in (await states(redis)).items()
                   if s[b"message_id"].decode() == str(doomed.original.id)]

    [button] = [c for row in doomed.original.components for c in row["components"]
                if "cancel" in c["custom_id"]]
    click = await fake.click(doomed.original.id, button["custom_id"], user_id=USER_ID)
    await click.wait_response()

    await fake.wait_for(lambda: keep_a.original.attachments and keep_b.original.attachments,
                        timeout=60)
    await fake.wait_for(lambda: "Cancelled" in doomed.original.content, timeout=30)
    assert not doomed.original.attachments
    assert (await redis.hget(Keys().job(doomed_id), "status")) == b"cancelled"
