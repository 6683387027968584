"""⬆️ Hires: `/pony hires:true` and the Hires button draw at the model's size, enlarge the picture
and refine it with img2img; the queue weighs the job by its extra pixels × steps. End to end
against the fake Discord (real discord.py, real Redis, the tiny pipeline), plus the plan's
arithmetic on its own."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ponybot_core.config import Config, HiresConfig, LoadedConfig
from ponybot_core.custom_ids import Action, custom_id
from ponybot_core.hires_plan import HiresTooLarge, plan
from ponybot_core.image_parameters import read_parameters
from ponybot_core.keys import Keys
from ponybot_core.queue import QueueReads
from ponybot_testkit.world import CHANNEL_ID, USER_ID, make_job, running_bot
from tests.conftest import QueueParts, embed_fields, job_id_of, pony, result

MANAGE_GUILD = 1 << 5
ADMIN_ID = 5_000_000_000_000_009


# --- helpers -----------------------------------------------------------------------------------


def buttons(message) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row["components"]]


def size_of(attachment) -> tuple[int, int]:
    return Image.open(io.BytesIO(attachment.data)).size


def with_hires(settings: LoadedConfig, **hires: object) -> LoadedConfig:
    config = Config.model_validate({**settings.config.model_dump(), "hires": hires})
    return settings.model_copy(update={"config": config})


@pytest.fixture
async def unet_calls(model_cache):
    """The latent (height, width) of every UNet call the workers make during the test: the
    img2img pass runs on the loaded pipeline's own UNet, so both passes show here."""
    pipe = await model_cache.get("tiny")
    calls: list[tuple[int, int]] = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda _module, args: calls.append(tuple(args[0].shape[-2:])))
    yield calls
    handle.remove()


# --- /pony hires:true ----------------------------------------------------------------------------


async def test_pony_hires_draws_at_the_models_size_then_refines_it_at_twice_the_size(
    fake, bot, start_worker, unet_calls, settings
):
    await start_worker()

    itx = await pony(fake, hires=True, seed=3)

    ack = itx.response["data"]["content"]
    assert "hires" in ack and "64×64" in ack and "128×128" in ack and "3.0×" in ack
    message = await result(fake, itx)
    assert size_of(message.attachments[0]) == (128, 128)
    # Two steps at the model's 64 px (8×8 latents), then the refine: 2 steps × 0.55 = 1 step
    # at 128 px. The second pass ran, on the enlarged picture.
    assert settings.config.hires.strength == 0.55
    assert unet_calls == [(8, 8), (8, 8), (16, 16)]
    assert embed_fields(message)["Size"] == "128×128 (hires from 64×64)"
    parameters = read_parameters(message.attachments[0].data)
    assert "Size: 64x64" in parameters and "Hires upscale: 2" in parameters
    assert "Hires resize: 128x128" in parameters and "Denoising strength: 0.55" in parameters


async def test_hires_follows_the_configured_scale_strength_and_steps(
    fake, settings, start_worker, unet_calls, redis
):
    custom = with_hires(settings, scale=1.5, strength=0.5, steps=4)
    async with running_bot(custom, fake):
        await start_worker(settings_=custom)
        message = await result(fake, await pony(fake, hires=True, size="landscape"))

    assert size_of(message.attachments[0]) == (144, 96)  # 96×64 × 1.5
    # 2 steps at 12×8 latents, then 4 × 0.5 = 2 steps at 18×12.
    assert unet_calls == [(8, 12), (8, 12), (12, 18), (12, 18)]


async def test_hires_that_cannot_grow_the_picture_is_refused_privately(fake, settings, redis):
    async with running_bot(with_hires(settings, max_side=64), fake):
        itx = await pony(fake, hires=True)

    assert itx.ephemeral and "Hires is not available" in itx.original.content
    assert not await redis.keys(Keys().job("*"))


# --- the ⬆️ Hires button -------------------------------------------------------------------------


async def test_the_hires_button_draws_the_same_seed_again_in_two_passes(
    fake, bot, redis, start_worker, unet_calls
):
    await start_worker()
    source = await result(fake, await pony(fake, seed=5))
    assert custom_id(Action.HIRES, job_id_of(source)) in buttons(source)
    unet_calls.clear()

    itx = await fake.click(source.id, custom_id(Action.HIRES, job_id_of(source)),
                           user_id=USER_ID)
    await itx.wait_response(timeout=5)

    assert not itx.ephemeral and "hires of job" in itx.original.content
    message = await result(fake, itx)
    assert size_of(message.attachments[0]) == (128, 128)
    assert unet_calls == [(8, 8), (8, 8), (16, 16)]
    job = await QueueReads(redis, Keys()).job(job_id_of(message))
    assert job is not None and job.hires is not None
    # The same seed, run on its own: the first pass is the picture that was shown.
    assert (job.seed, job.seeded) == (5, True)
    # Drawn in hires already: no second Hires button; Edit stays (and keeps hires).
    assert custom_id(Action.HIRES, job.id) not in buttons(message)
    assert custom_id(Action.EDIT, job.id) in buttons(message)


# --- its cost in the queue -----------------------------------------------------------------------


async def test_queue_show_weighs_a_hires_job_by_its_extra_pixels_times_steps(fake, bot, redis):
    # Recent jobs took 10 s each; no worker runs, so everything waits.
    await redis.lpush(Keys().durations, "10")
    for options in ({}, {"hires": True}, {}):
        await pony(fake, **options)

    itx = await fake.invoke("queue show", {}, channel_id=CHANNEL_ID, user_id=ADMIN_ID,
                            permissions=MANAGE_GUILD)
    await itx.wait_response(timeout=5)

    lines = itx.original.content.splitlines()
    # The hires job is 1 + (128×128 px × 1 step) / (64×64 px × 2 steps) = 3 plain jobs.
    assert [line.rsplit("· ", 1)[-1] for line in lines] == \
        ["ETA ~10 s", "ETA ~40 s", "ETA ~50 s"]
    assert "· hires ·" in lines[1]


async def test_a_hires_jobs_worker_seconds_are_recorded_per_plain_jobs_worth(queue: QueueParts):
    job = make_job(hires=plan(HiresConfig(), 64, 64, 2))  # 3 plain jobs' worth
    await queue.producer.enqueue(job)
    [delivery] = await queue.consumer().take(count=1)
    await delivery.posting()

    await delivery.posted(1, worker_seconds=6.0)

    assert await queue.reads.recent_job_seconds() == 2.0


# --- the plan ----------------------------------------------------------------------------------


def test_the_default_plan_doubles_the_models_sizes_as_a1111s_hires_fix_does():
    config = HiresConfig()
    assert (config.scale, config.steps) == (2.0, 0)
    assert 0.5 <= config.strength <= 0.6
    for (width, height), final in {(512, 512): (1024, 1024), (512, 768): (1024, 1536),
                                   (768, 512): (1536, 1024)}.items():
        second = plan(config, width, height, 25)
        assert (second.width, second.height) == final
        assert second.steps == 25 and second.denoising_steps == 13


def test_the_scale_shrinks_to_keep_every_side_within_max_side_and_the_aspect():
    second = plan(HiresConfig(scale=2, max_side=1024), 512, 768, 20)
    assert (second.width, second.height) == (680, 1024)  # ×4/3, each side a multiple of 8
    with pytest.raises(HiresTooLarge):
        plan(HiresConfig(max_side=512), 512, 768, 20)


def test_a_hires_job_weighs_one_plus_its_second_pass_in_plain_jobs():
    plain = make_job(steps=20)
    assert plain.work_units() == 1.0
    hires = make_job(steps=20, hires=plan(HiresConfig(), 64, 64, 20))  # 4× px, 11 of 20 steps
    assert hires.work_units() == pytest.approx(1 + 4 * 11 / 20)


def test_hires_jobs_never_share_a_pipeline_call_with_plain_ones():
    second = plan(HiresConfig(), 64, 64, 2)
    plain, hires, other_hires = make_job(), make_job(hires=second), make_job(hires=second)
    assert hires.batch_key() != plain.batch_key()
    assert hires.batch_key() == other_hires.batch_key()
    assert make_job(hires=plan(HiresConfig(strength=0.3), 64, 64, 2)).batch_key() != \
        hires.batch_key()
