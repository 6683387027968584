"""The buttons under every result — 🔁 Re-roll, U<i>, V<i>, 🗑 Delete — and `/pony upscale:true`,
end to end: real discord.py against the fake Discord, real Redis, the tiny diffusers pipeline and
a tiny Real-ESRGAN net."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.results.upscale import load_upscaler
from ponybot_core.config import Config, LoadedConfig, UpscalerEntry
from ponybot_core.custom_ids import Action, custom_id, result_buttons, template
from ponybot_core.image_parameters import read_parameters
from ponybot_core.job import Job, JobKind
from ponybot_core.keys import Keys
from ponybot_core.queue import Producer, QueueReads
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, OTHER_USER_ID, USER_ID, running_bot

MANAGE_GUILD = 1 << 5
ADMIN_ID = 5_000_000_000_000_009



@pytest.fixture(scope="session")
def tiny_upscaler(tmp_path_factory: pytest.TempPathFactory) -> UpscalerEntry:
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

    path = save_pth(realesrgan_state_dict(), tmp_path_factory.mktemp("esrgan") / "tiny-x4.pth")
    return UpscalerEntry(id="tiny-esrgan", name="Tiny ESRGAN", path=path)


def with_config(settings: LoadedConfig, **changes: object) -> LoadedConfig:
    config = Config.model_validate({**settings.config.model_dump(), **changes})
    return settings.model_copy(update={"config": config})


@pytest.fixture
def settings(settings: LoadedConfig, tiny_upscaler: UpscalerEntry) -> LoadedConfig:
    """The tests' usual settings with the tiny upscaler configured."""
    return with_config(
        settings, upscalers=[tiny_upscaler.model_dump()], default_upscaler=tiny_upscaler.id
    )


# --- helpers -----------------------------------------------------------------------------------


async def pony(fake, **options):
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    itx = await fake.invoke(
        "pony", options, guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID
    )
    await itx.wait_response(timeout=5)
    return itx


async def result(fake, itx, *, images: int = 1):
    """The interaction's message once the worker has edited the result (and buttons) into it."""
    await fake.wait_for(
        lambda: len(itx.original.attachments) == images and itx.original.embeds, timeout=30
    )
    return itx.original


def job_id_of(message) -> str:
    return message.embeds[0]["footer"]["text"].removeprefix("job ")


def buttons(message) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row["components"]]


def fields(message) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}


def image(attachment) -> Image.Image:
    return Image.open(io.BytesIO(attachment.data))


def pixels(attachment) -> np.ndarray:
    return np.asarray(image(attachment).convert("RGB")).astype(int)


async def click(
    fake,
    message,
    action: Action,
    index: int | None = None,
    *,
    user_id: int = USER_ID,
    permissions: int = 0,
):
    itx = await fake.click(
        message.id,
        custom_id(action, job_id_of(message), index),
        user_id=user_id,
        permissions=permissions,
    )
    await itx.wait_response(timeout=5)
    return itx


# --- the buttons -------------------------------------------------------------------------------


async def test_every_result_has_the_buttons_with_persistent_custom_ids(fake, bot, start_worker):
    await start_worker()
    message = await result(fake, await pony(fake, count=2), images=2)

    job_id = job_id_of(message)
    assert buttons(message) == [
        f"pony:upscale:{job_id}:0",
        f"pony:upscale:{job_id}:1",
        f"pony:vary:{job_id}:0",
        f"pony:vary:{job_id}:1",
        f"pony:reroll:{job_id}",
        f"pony:edit:{job_id}",
        f"pony:hires:{job_id}",
        f"pony:delete:{job_id}",
    ]
    labels = [c.get("label") for row in message.components for c in row["components"]]
    assert labels == ["U1", "U2", "V1", "V2", "Re-roll", "Edit", "Hires", "Delete"]


async def test_reroll_queues_a_new_message_and_draws_the_same_prompt_with_a_new_seed(
    fake, bot, start_worker
):
    await start_worker()
    first = await result(fake, await pony(fake, seed=42))

    itx = await click(fake, first, Action.REROLL)

    assert itx.response_type == 4 and not itx.ephemeral
    assert "Queued" in itx.original.content and itx.original.id != first.id
    second = await result(fake, itx)
    assert fields(second)["Prompt"] == fields(first)["Prompt"]
    assert fields(second)["Seed"] != "42"
    assert not np.array_equal(pixels(second.attachments[0]), pixels(first.attachments[0]))
    assert job_id_of(second) != job_id_of(first)
    assert buttons(second)  # a re-roll's result has buttons too


async def test_u2_upscales_the_second_image_of_a_two_image_job_four_times(
    fake, bot, start_worker, tiny_upscaler
):
    await start_worker()
    source = await result(fake, await pony(fake, count=2), images=2)

    itx = await click(fake, source, Action.UPSCALE, 1)

    assert "Upscale of image 2" in itx.original.content
    upscaled = await result(fake, itx)
    assert image(upscaled.attachments[0]).size == (256, 256)
    expected = load_upscaler(
        tiny_upscaler, base_dir=Path("/"), device="cpu", dtype=torch.float32
    ).upscale(image(source.attachments[1]))
    assert np.array_equal(pixels(upscaled.attachments[0]), np.asarray(expected).astype(int))
    assert "Tiny ESRGAN" in read_parameters(upscaled.attachments[0].data)
    # An upscale can only be deleted: there is nothing to re-roll, vary it from the original.
    assert buttons(upscaled) == [custom_id(Action.DELETE, job_id_of(upscaled))]


async def test_v1_draws_a_variation_of_the_first_image_with_the_same_prompt(
    fake, bot, start_worker, redis, settings
):
    await start_worker()
    source = await result(fake, await pony(fake, count=2), images=2)

    itx = await click(fake, source, Action.VARY, 0)

    variation = await result(fake, itx)
    assert image(variation.attachments[0]).size == (64, 64)
    assert not np.array_equal(pixels(variation.attachments[0]), pixels(source.attachments[0]))
    assert fields(variation)["Prompt"] == fields(source)["Prompt"]
    job = await QueueReads(redis, Keys()).job(job_id_of(variation))
    assert job is not None and job.kind is JobKind.VARIATION
    assert (job.source_job_id, job.source_index) == (job_id_of(source), 0)
    assert job.strength == settings.config.variation_strength


async def test_delete_is_for_the_requester_and_server_admins(fake, bot, start_worker):
    await start_worker()
    mine = await result(fake, await pony(fake, seed=1))
    for_admin = await result(fake, await pony(fake, seed=2))

    refused = await click(fake, mine, Action.DELETE, user_id=OTHER_USER_ID)
    assert refused.ephemeral and "Only the person who asked" in refused.original.content
    assert not mine.deleted

    deleted = await click(fake, mine, Action.DELETE)
    await fake.wait_for(lambda: mine.deleted and deleted.original.content)
    assert deleted.ephemeral and "Deleted" in deleted.original.content

    by_admin = await click(
        fake, for_admin, Action.DELETE, user_id=ADMIN_ID, permissions=MANAGE_GUILD
    )
    await fake.wait_for(lambda: for_admin.deleted and by_admin.original.content)
    assert by_admin.ephemeral and "Deleted" in by_admin.original.content


async def test_buttons_keep_working_after_the_bot_restarts(fake, bot, settings, start_worker):
    await start_worker()
    first = await result(fake, await pony(fake))
    await bot.close()

    async with running_bot(settings, fake):
        itx = await click(fake, first, Action.REROLL)
        assert not itx.ephemeral and "Queued" in itx.original.content
        second = await result(fake, itx)
    assert fields(second)["Prompt"] == fields(first)["Prompt"]


async def test_a_button_on_an_expired_job_says_so_privately(fake, bot, redis, start_worker):
    await start_worker()
    message = await result(fake, await pony(fake))
    await redis.delete(Keys().job(job_id_of(message)))

    for action, index in [(Action.REROLL, None), (Action.UPSCALE, 0), (Action.VARY, 0)]:
        itx = await click(fake, message, action, index)
        assert itx.ephemeral and "expired" in itx.original.content
    assert await unfinished(redis) == 0


async def test_an_upscale_of_a_deleted_picture_fails_with_a_clear_message(
    fake, bot, redis, start_worker
):
    await start_worker()
    source = await result(fake, await pony(fake))
    queue = Producer(redis, Keys(), result_ttl_s=600)
    await queue.pause(GUILD_ID)  # keep the click's job queued while its picture goes away

    itx = await click(fake, source, Action.UPSCALE, 0)
    assert "paused" in itx.original.content
    fake.messages[source.id].deleted = True
    await queue.resume(GUILD_ID)

    await fake.wait_for(lambda: "could not be made" in itx.original.content, timeout=30)
    assert "deleted" in itx.original.content and not itx.original.attachments
    assert await redis.xlen(Keys().dead) == 1


# --- /pony upscale:true and the attachment limit ---------------------------------------------


async def test_pony_upscale_true_posts_images_four_times_larger(fake, bot, start_worker):
    await start_worker()
    message = await result(fake, await pony(fake, upscale=True, count=2), images=2)

    assert [image(a).size for a in message.attachments] == [(256, 256), (256, 256)]
    assert fields(message)["Upscaled"] == "Tiny ESRGAN ×4"
    # Already upscaled: no U buttons, the rest as usual.
    assert not any(b.startswith("pony:upscale:") for b in buttons(message))
    assert sum(b.startswith("pony:vary:") for b in buttons(message)) == 2


async def test_a_file_over_the_attachment_limit_is_reencoded_under_it_and_the_message_says_so(
    fake, bot, settings, start_worker
):
    limit = 4096
    small = with_config(
        settings, worker={**settings.config.worker.model_dump(), "attachment_limit_bytes": limit}
    )
    await start_worker(settings_=small)

    message = await result(fake, await pony(fake, upscale=True))

    [attachment] = message.attachments
    assert attachment.size <= limit and attachment.filename.endswith(".webp")
    assert f"to fit Discord's {limit // 1024} KiB limit" in message.content


async def test_pony_upscale_without_an_upscaler_is_refused_privately(fake, settings, redis):
    plain = with_config(settings, upscalers=[], default_upscaler=None)
    async with running_bot(plain, fake):
        itx = await pony(fake, upscale=True)
    assert itx.ephemeral and "no upscaler is configured" in itx.original.content
    assert await unfinished(redis) == 0


# --- the custom_ids ----------------------------------------------------------------------------


def a_job(**changes: object) -> Job:
    fields = dict(
        application_id=1,
        interaction_id=2,
        interaction_token="t",
        guild_id=3,
        channel_id=4,
        user_id=5,
        model_id="tiny",
        tags="pony",
        prompt="safe, pony",
        negative_prompt="",
        seed=7,
        steps=2,
        cfg=7.5,
        sampler="ddim",
        width=64,
        height=64,
    )
    return Job.model_validate({**fields, **changes})


def test_every_custom_id_matches_its_template_and_no_other():
    job_id = "0123456789abcdef"
    for action in Action:
        index = 3 if action in (Action.UPSCALE, Action.VARY) else None
        value = custom_id(action, job_id, index)
        matches = [a for a in Action if re.fullmatch(template(a), value)]
        assert matches == [action] and len(value) <= 100
    with pytest.raises(ValueError):
        custom_id(Action.UPSCALE, job_id)  # U and V name an image


def test_ten_images_fill_discords_five_rows_of_five_buttons():
    rows: dict[int, int] = {}
    for button in result_buttons(a_job(count=10), can_upscale=True):
        rows[button.row] = rows.get(button.row, 0) + 1
    assert rows == {0: 5, 1: 5, 2: 5, 3: 5, 4: 4}
    upscale_job = a_job(kind="upscale", source_job_id="ab", source_index=0)
    assert [b.label for b in result_buttons(upscale_job, can_upscale=True)] == ["Delete"]
    assert not any(
        b.label.startswith("U") for b in result_buttons(a_job(count=2), can_upscale=False)
    )


async def unfinished(redis) -> int:
    """Jobs queued or running, as the admins' snapshot counts them."""
    snap = await QueueReads(redis, Keys()).snapshot(all_guilds=True)
    return len(snap.queued) + len(snap.running)
