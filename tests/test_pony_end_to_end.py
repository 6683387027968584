"""/pony from Discord to the posted image, on real discord.py, real Redis and a real pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from redis.asyncio import Redis

from ponybot_core.keys import Keys
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, NSFW_CHANNEL_ID, USER_ID

pytestmark = pytest.mark.usefixtures("bot")


async def pony(fake, *, validate: bool = True, **options):
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    channel_id = options.pop("channel_id", CHANNEL_ID)
    # validate=False sends what Discord's client would refuse (a stale command list, a bot).
    itx = await fake.invoke("pony", options, guild_id=GUILD_ID, channel_id=channel_id,
                            user_id=USER_ID, validate=validate)
    await itx.wait_response(timeout=5)
    return itx


async def finished(fake, itx, *, images: int = 1):
    """The interaction's message once the worker has edited the images into it."""
    await fake.wait_for(lambda: len(itx.original.attachments) == images, timeout=30)
    return itx.original


def pixels(attachment) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(attachment.data)).convert("RGB"))


async def test_pony_answers_at_once_with_position_model_seed_and_exact_prompt(fake):
    itx = await pony(fake, seed=1234)

    assert itx.response_type == 4 and not itx.ephemeral
    content = itx.original.content
    assert "next up" in content or "position" in content
    assert "Tiny Pony" in content
    assert "`1234`" in content
    assert "twilight sparkle, unicorn, solo" in content


async def test_worker_edits_the_same_message_with_the_image_and_its_parameters(fake,
                                                                               start_worker):
    await start_worker()
    itx = await pony(fake, seed=7, steps=3, cfg=6.0)

    message = await finished(fake, itx)

    assert message.id == itx.original.id and message.via == "interaction"
    image = Image.open(io.BytesIO(message.attachments[0].data))
    assert image.format == "PNG" and image.size == (64, 64)
    fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
    assert fields["Seed"] == "7"
    assert fields["Steps"] == "3"
    assert fields["CFG"] == "6"
    assert fields["Model"] == "Tiny Pony"
    assert "twilight sparkle" in fields["Prompt"]


async def test_same_seed_and_parameters_give_the_same_pixels(fake, start_worker):
    await start_worker()
    first = await finished(fake, await pony(fake, seed=99))
    second = await finished(fake, await pony(fake, seed=99))
    other = await finished(fake, await pony(fake, seed=100))

    assert np.array_equal(pixels(first.attachments[0]), pixels(second.attachments[0]))
    assert not np.array_equal(pixels(first.attachments[0]), pixels(other.attachments[0]))


async def test_count_gives_that_many_images_each_reproducible_by_its_own_seed(fake,
                                                                              start_worker):
    await start_worker()
    batch = await finished(fake, await pony(fake, seed=500, count=3), images=3)
    single = await finished(fake, await pony(fake, seed=501))

    assert len({a.filename for a in batch.attachments}) == 3
    # Image 2 of the batch has seed 501; alone it is the same picture up to batch rounding.
    diff = np.abs(pixels(batch.attachments[1]).astype(int) - pixels(single.attachments[0]))
    assert diff.max() <= 2


@pytest.mark.parametrize(("size", "expected"), [("portrait", (64, 96)), ("landscape", (96, 64))])
async def test_size_option_sets_the_image_dimensions(fake, start_worker, size, expected):
    await start_worker()
    message = await finished(fake, await pony(fake, size=size))
    assert Image.open(io.BytesIO(message.attachments[0].data)).size == expected


async def test_expired_token_falls_back_to_a_channel_post_replying_to_the_user(fake,
                                                                               start_worker):
    itx = await pony(fake, seed=3)  # queued while no worker runs
    fake.clock.advance(15 * 60 + 1)
    await start_worker()

    await fake.wait_for(lambda: fake.channel_messages(CHANNEL_ID), timeout=30)
    [post] = fake.channel_messages(CHANNEL_ID)
    assert post.via == "bot"
    assert f"<@{USER_ID}>" in post.content
    assert post.message_reference["message_id"] == str(itx.original.id)
    assert post.attachments[0].filename.endswith(".png")
    assert not itx.original.attachments  # the expired message was left alone


async def test_non_age_restricted_channel_renders_the_safe_rating(fake):
    itx = await pony(fake, tags="fluttershy, pegasus")
    assert "safe" in itx.original.content


async def test_age_restricted_channel_keeps_the_users_rating(fake):
    itx = await pony(fake, tags="fluttershy, suggestive", channel_id=NSFW_CHANNEL_ID)
    assert "suggestive" in itx.original.content


BAD_INPUT = [
    ({"tags": "   "}, "tag"),
    ({"tags": "-grimdark, -blood"}, "negative"),
    ({"steps": 0}, "`steps` must be between"),
    ({"steps": 999}, "`steps` must be between"),
    ({"cfg": 50.0}, "`cfg` must be between"),
    ({"count": 9}, "`count` must be between"),
    ({"size": "huge"}, "`size` must be one of"),
    ({"seed": -1}, "`seed` must be between"),
    ({"model": "nope"}, "Unknown model"),
    ({"tags": "explicit, fluttershy"}, "age-restricted"),
]


@pytest.mark.parametrize(("options", "message"), BAD_INPUT,
                         ids=[next(iter(o)) + ":" + m for o, m in BAD_INPUT])
async def test_bad_input_gets_an_ephemeral_message_and_queues_nothing(fake, redis: Redis,
                                                                      options, message):
    itx = await pony(fake, validate=False, **options)

    assert itx.ephemeral
    assert message.lower() in itx.original.content.lower()
    assert await redis.xlen(Keys().stream) == 0
