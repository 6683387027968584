"""Bring your own picture: `/pony image:` (img2img from an upload) and `/upscale image:`, end to
end on real discord.py against the fake Discord, real Redis, the tiny pipeline and the tiny
Real-ESRGAN; and every bad attachment refused, by the bot from what Discord says about it
before anything is queued, and by the worker from the bytes themselves."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from redis.asyncio import Redis

from ponybot_core.config import Config, LoadedConfig, UpscalerEntry
from ponybot_core.image_parameters import parse_parameters, read_parameters
from ponybot_core.job import JobKind
from ponybot_core.keys import Keys
from ponybot_core.queue import JobStatus, QueueReads
from ponybot_request.jobs import model_size
from ponybot_testkit.hostile_pictures import apng_frames, truncated
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, USER_ID
from tests.conftest import queued_job_id, until_finished

A1111 = ("pinkie pie, party\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
         "CFG scale: 7, Seed: 5, Size: 40x24, Model: someone-elses-model")


# --- pictures -------------------------------------------------------------------------------


def picture(width: int, height: int, *, fmt: str = "PNG", colour: int = 0,
            parameters: str | None = None) -> bytes:
    """A noisy picture (deterministic per colour), so that what is drawn from it shows it."""
    rng = np.random.default_rng(colour)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[..., 0] = colour
    out = io.BytesIO()
    info = PngInfo() if parameters and fmt == "PNG" else None
    if info is not None:
        info.add_text("parameters", parameters)
    Image.fromarray(pixels).save(out, format=fmt, pnginfo=info)
    return out.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes of valid PNG that declares `width` × `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def image_of(attachment) -> Image.Image:
    return Image.open(io.BytesIO(attachment.data))


# --- the world ------------------------------------------------------------------------------


def with_config(settings: LoadedConfig, **changes: object) -> LoadedConfig:
    raw = settings.config.model_dump()
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return settings.model_copy(update={"config": Config.model_validate(raw)})


@pytest.fixture(scope="session")
def tiny_upscaler(tmp_path_factory: pytest.TempPathFactory) -> UpscalerEntry:
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

    path = save_pth(realesrgan_state_dict(), tmp_path_factory.mktemp("esrgan") / "tiny-x4.pth")
    return UpscalerEntry(id="tiny-esrgan", name="Tiny ESRGAN", path=path)


@pytest.fixture
def settings(settings: LoadedConfig, tiny_upscaler: UpscalerEntry) -> LoadedConfig:
    """Two upscalers (the same tiny net under two names), the first the default."""
    other = tiny_upscaler.model_copy(update={"id": "other-esrgan", "name": "Other ESRGAN"})
    return with_config(settings, upscalers=[tiny_upscaler.model_dump(), other.model_dump()],
                       default_upscaler=tiny_upscaler.id)


async def command(fake, name: str, **options):
    itx = await fake.invoke(name, options, guild_id=GUILD_ID, channel_id=CHANNEL_ID,
                            user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def pony_image(fake, data: bytes, filename: str = "mine.png", **options):
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    return await command(fake, "pony", image=(filename, data), **options)


async def finished(fake, itx, *, images: int = 1):
    await fake.wait_for(lambda: len(itx.original.attachments) == images, timeout=60)
    return itx.original


def uploaded_attachment(fake, itx):
    """The fake's record of the picture a command was given (what its "CDN" serves)."""
    [attachment_id] = itx.payload["data"]["resolved"]["attachments"]
    return fake.attachments[int(attachment_id)]


async def nothing_queued(redis: Redis) -> bool:
    snapshot = await QueueReads(redis, Keys()).snapshot(all_guilds=True)
    return not snapshot.queued and not snapshot.running and await redis.xlen(Keys().stream) == 0


# --- /pony image: ---------------------------------------------------------------------------


@pytest.mark.parametrize(("upload", "drawn"), [
    ((512, 512), (512, 512)),
    ((1024, 1024), (512, 512)),  # the model's pixel count, not the picture's
    ((1000, 600), (664, 400)),
    ((600, 1000), (400, 664)),
    ((3000, 1000), (768, 256)),  # no side past the longest configured (768)
    ((4000, 100), (768, 64)),  # only beyond 12:1 is a picture stretched
    ((64, 48), (592, 440)),  # a small picture is drawn at the model's size
])
def test_an_upload_is_drawn_at_its_aspect_with_the_models_pixel_count(upload, drawn):
    config = Config.model_validate({"default_model": "m", "models": [
        {"id": "m", "name": "M", "path": "m"}]})  # the shipped sizes: 512², 512×768, 768×512

    assert model_size(*upload, config) == drawn



async def test_pony_image_draws_from_the_uploaded_picture_at_its_own_shape(
        fake, bot, start_worker, redis):
    await start_worker()
    itx = await pony_image(fake, picture(150, 100), strength=0.5, seed=11)

    assert not itx.ephemeral
    assert "Variation of your picture `mine.png` queued" in itx.original.content
    job_id = queued_job_id(itx)
    message = await finished(fake, itx)

    # 3:2 like the upload (the tiny model's 64×64 pixels, but no side under 64).
    assert image_of(message.attachments[0]).size == (96, 64)
    parsed = parse_parameters(read_parameters(message.attachments[0].data) or "")
    assert (parsed.width, parsed.height, parsed.seed) == (96, 64, 11)
    assert parsed.denoising_strength == 0.5
    assert "your variation of your picture `mine.png`" in message.content
    job = await QueueReads(redis, Keys()).job(job_id)
    assert job is not None and job.kind is JobKind.VARIATION and job.source_job_id is None
    assert job.source_upload is not None and job.source_upload.url == uploaded_attachment(
        fake, itx).url
    assert fake.cdn_requests == [job.source_upload.url.removeprefix(fake.base_url)]


async def test_what_is_drawn_depends_on_the_picture_and_the_same_picture_gives_the_same(
        fake, bot, start_worker):
    await start_worker()
    dark = await finished(fake, await pony_image(fake, picture(64, 64, colour=0), seed=3))
    dark_again = await finished(fake, await pony_image(fake, picture(64, 64, colour=0), seed=3))
    light = await finished(fake, await pony_image(fake, picture(64, 64, colour=255), seed=3))

    def pixels(message) -> np.ndarray:
        return np.asarray(image_of(message.attachments[0]).convert("RGB")).astype(int)

    assert np.array_equal(pixels(dark), pixels(dark_again))
    assert np.abs(pixels(dark) - pixels(light)).mean() > 5


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
async def test_jpeg_and_webp_pictures_are_taken_too(fake, bot, start_worker, fmt):
    await start_worker()
    itx = await pony_image(fake, picture(48, 64, fmt=fmt), filename=f"mine.{fmt.lower()}")

    message = await finished(fake, itx)

    assert image_of(message.attachments[0]).size == (64, 88)  # 3:4, no side under 64


async def test_the_result_of_pony_image_has_the_usual_buttons_and_v1_varies_the_result(
        fake, bot, start_worker, redis):
    await start_worker()
    first = await finished(fake, await pony_image(fake, picture(64, 64)))
    vary = next(c["custom_id"] for row in first.components for c in row["components"]
                if c["custom_id"].startswith("pony:vary:"))

    itx = await fake.click(first.id, vary, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    job_id = queued_job_id(itx)
    await finished(fake, itx)

    job = await QueueReads(redis, Keys()).job(job_id)
    assert job is not None and job.source_upload is None  # from the posted picture
    assert job.source_job_id == first.embeds[0]["footer"]["text"].removeprefix("job ")


# --- /upscale -------------------------------------------------------------------------------


async def test_upscale_puts_any_picture_through_the_default_upscaler_keeping_its_parameters(
        fake, bot, start_worker):
    await start_worker()
    itx = await command(fake, "upscale", image=("art.png", picture(40, 24, parameters=A1111)))

    assert "Upscale of your picture `art.png` queued" in itx.original.content
    assert "Prompt" not in itx.original.content and "seed" not in itx.original.content
    message = await finished(fake, itx)

    assert image_of(message.attachments[0]).size == (160, 96)
    assert read_parameters(message.attachments[0].data) == \
        f"{A1111}, Postprocess upscaler: Tiny ESRGAN ×4"
    embed = message.embeds[0]
    assert embed["title"] == "Upscale"
    assert {f["name"]: f["value"] for f in embed["fields"]} == {
        "Upscale of": "your picture `art.png`", "Upscaled": "Tiny ESRGAN ×4"}
    # An upscale can only be deleted.
    assert [c["label"] for row in message.components for c in row["components"]] == ["Delete"]


async def test_upscale_uses_the_upscaler_asked_for(fake, bot, start_worker):
    await start_worker()
    itx = await command(fake, "upscale", image=("art.webp", picture(32, 32, fmt="WEBP")),
                        upscaler="other-esrgan")

    message = await finished(fake, itx)

    assert read_parameters(message.attachments[0].data) == \
        "Postprocess upscaler: Other ESRGAN ×4"


async def test_an_upscale_too_big_for_discord_is_fitted_under_the_attachment_limit(
        fake, settings, start_worker):
    from ponybot_testkit.world import running_bot

    small = with_config(settings, worker={"attachment_limit_bytes": 30_000})
    async with running_bot(small, fake):
        await start_worker(settings_=small)
        itx = await command(fake, "upscale", image=("noise.png", picture(96, 96)))
        message = await finished(fake, itx)

    assert len(message.attachments[0].data) <= 30_000
    assert "to fit Discord's" in message.content


# --- what the bot refuses, from what Discord says ----------------------------------------------

REFUSED = [
    ("too big", ("big.png", picture(16, 16) + b"\0" * (10 * 1024 * 1024)),
     "pictures may be at most 10 MiB"),
    ("not an image, named like one", ("pony.png", b"<html>hello</html>" * 10),
     "could not read `pony.png` as a picture"),
    ("not an image type", ("notes.txt", b"hello"), "not a PNG, JPEG or WebP picture"),
    ("a GIF", ("anim.gif", b"GIF89a" + b"\0" * 64), "not a PNG, JPEG or WebP picture"),
    ("a decompression bomb", ("bomb.png", bomb_png()), "100000×100000 pixels"),
]


@pytest.mark.parametrize(("what", "upload", "said"), REFUSED, ids=[r[0] for r in REFUSED])
@pytest.mark.parametrize("name", ["pony", "upscale"])
async def test_a_bad_attachment_is_refused_privately_with_nothing_queued_or_downloaded(
        fake, bot, redis, name, what, upload, said):
    options = {"tags": "pony"} if name == "pony" else {}

    itx = await command(fake, name, image=upload, **options)

    assert itx.ephemeral
    assert said in itx.original.content
    assert await nothing_queued(redis)
    assert fake.cdn_requests == []


async def test_upscale_refuses_a_picture_whose_upscale_would_be_too_large(fake, bot, redis):
    itx = await command(fake, "upscale", image=("wide.png", picture(1100, 1000)))

    assert itx.ephemeral and "at most 1,048,576 pixels" in itx.original.content
    assert await nothing_queued(redis)


async def test_an_attachment_not_on_discords_hosts_is_refused_and_never_fetched(
        fake, settings, redis):
    from ponybot_core.config import UploadsConfig
    from ponybot_testkit.world import running_bot

    discord_only = with_config(settings, uploads={"hosts": UploadsConfig().hosts})
    async with running_bot(discord_only, fake):
        for name, options in (("pony", {"tags": "pony"}), ("upscale", {})):
            itx = await command(fake, name, image=("mine.png", picture(32, 32)), **options)
            assert itx.ephemeral
            assert "not on Discord's attachment servers" in itx.original.content

    assert await nothing_queued(redis)
    assert fake.cdn_requests == []


@pytest.mark.parametrize(("options", "said"), [
    ({"strength": 0.5}, "give one with `image`"),
    ({"image": ("mine.png", picture(32, 32)), "size": "portrait"}, "without `size`"),
], ids=["strength without image", "size with image"])
async def test_options_that_do_not_go_together_are_refused(fake, bot, redis, options, said):
    itx = await command(fake, "pony", tags="pony", **options)

    assert itx.ephemeral and said in itx.original.content
    assert await nothing_queued(redis)


async def test_upscale_without_an_upscaler_configured_is_refused(fake, settings, redis):
    from ponybot_testkit.world import running_bot

    async with running_bot(with_config(settings, upscalers=[], default_upscaler=None), fake):
        itx = await command(fake, "upscale", image=("mine.png", picture(32, 32)))

    assert itx.ephemeral and "no upscaler is configured" in itx.original.content
    assert await nothing_queued(redis)


# --- what the worker refuses, from the bytes -------------------------------------------------

SWAPPED = [
    ("a decompression bomb", bomb_png(), "more than 16,777,216 pixels"),
    ("not an image", b"<html>" + b"x" * 500, "not a PNG, JPEG or WebP picture"),
]


@pytest.mark.parametrize(("what", "served", "said"), SWAPPED, ids=[s[0] for s in SWAPPED])
async def test_the_worker_checks_the_bytes_it_downloads_not_what_discord_said(
        fake, bot, start_worker, redis, what, served, said):
    itx = await pony_image(fake, picture(64, 64))
    job_id = queued_job_id(itx)
    # The "CDN" now serves other bytes than Discord described: the worker must not care.
    uploaded_attachment(fake, itx).served = served
    await start_worker()

    assert await until_finished(redis, [job_id]) == [JobStatus.DEAD]
    content = itx.original.content
    assert "your variation could not be drawn: your picture cannot be used" in content
    assert said in content
    state = await QueueReads(redis, Keys()).state(job_id)
    assert state is not None and state.attempts == 1  # refused for good, not retried


@pytest.mark.parametrize("name", ["pony", "upscale"])
async def test_a_truncated_upload_is_refused_once_and_never_retried(
        fake, bot, start_worker, redis, name):
    options = {"tags": "pony"} if name == "pony" else {}
    itx = await command(fake, name, image=("mine.png", picture(64, 64)), **options)
    job_id = queued_job_id(itx)
    uploaded_attachment(fake, itx).served = truncated(picture(64, 64))  # the upload stopped
    await start_worker()

    assert await until_finished(redis, [job_id]) == [JobStatus.DEAD]
    assert "your picture cannot be used: the picture is damaged or cut off" in \
        itx.original.content
    state = await QueueReads(redis, Keys()).state(job_id)
    assert state is not None and state.attempts == 1
    assert len(fake.cdn_requests) == 1  # downloaded once: nothing retried it


async def test_an_animation_bomb_is_refused_from_its_header_before_any_frame_is_decoded(
        fake, bot, start_worker, redis):
    itx = await pony_image(fake, picture(64, 64))
    job_id = queued_job_id(itx)
    # 160,000 frames declared; no frame's data is valid, so decoding any frame would end in
    # "damaged": being told about the frames means the header alone decided.
    uploaded_attachment(fake, itx).served = apng_frames(64, 64, 3, declared=160_000,
                                                        damaged=True)
    await start_worker()

    assert await until_finished(redis, [job_id]) == [JobStatus.DEAD]
    content = itx.original.content
    assert "your picture cannot be used: the picture is an animation of 160,000 frames of " \
        "64×64" in content
    assert "damaged" not in content
    state = await QueueReads(redis, Keys()).state(job_id)
    assert state is not None and state.attempts == 1
    assert len(fake.cdn_requests) == 1


async def test_a_variation_of_a_posted_picture_that_comes_back_damaged_is_refused_once(
        fake, bot, start_worker, redis):
    await start_worker()
    first = await finished(fake, await pony_image(fake, picture(64, 64)))
    posted = first.attachments[0]
    posted.served = truncated(posted.data)
    vary = next(c["custom_id"] for row in first.components for c in row["components"]
                if c["custom_id"].startswith("pony:vary:"))

    itx = await fake.click(first.id, vary, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    job_id = queued_job_id(itx)

    assert await until_finished(redis, [job_id]) == [JobStatus.DEAD]
    assert "image 1 could not be read back: the picture is damaged or cut off" in \
        itx.original.content
    state = await QueueReads(redis, Keys()).state(job_id)
    assert state is not None and state.attempts == 1
    assert fake.cdn_requests.count(posted.url.removeprefix(fake.base_url)) == 1


async def test_a_cancel_stops_an_uploads_decode_as_it_stops_sampling(fake, bot, redis, settings):
    import threading

    from inference.drawing.progress import SamplingCancelled
    from inference.results.sources import fetch_upload

    itx = await pony_image(fake, picture(256, 256))
    job = await QueueReads(redis, Keys()).job(queued_job_id(itx))
    assert job is not None
    cancelled = threading.Event()
    cancelled.set()

    with pytest.raises(SamplingCancelled):
        await fetch_upload(job, settings.config.uploads, cancelled=cancelled)
    assert len(fake.cdn_requests) == 1


async def test_the_worker_enforces_its_own_size_limit(fake, bot, settings, start_worker, redis):
    itx = await command(fake, "upscale", image=("art.png", picture(64, 64)))
    job_id = queued_job_id(itx)
    strict = with_config(settings, uploads={"max_bytes": 4096})

    await start_worker(settings_=strict)

    assert await until_finished(redis, [job_id]) == [JobStatus.DEAD]
    assert "larger than the limit of 4 KiB" in itx.original.content or \
        "the limit is 4 KiB" in itx.original.content


async def test_the_worker_never_fetches_from_a_host_it_does_not_allow(
        fake, bot, settings, start_worker, redis):
    from ponybot_core.config import UploadsConfig

    itx = await pony_image(fake, picture(64, 64))
    job_id = queued_job_id(itx)
    discord_only = with_config(settings, uploads={"hosts": UploadsConfig().hosts})

    await start_worker(settings_=discord_only)

    assert await until_finished(redis, [job_id]) == [JobStatus.DEAD]
    assert "not on Discord's attachment servers" in itx.original.content
    assert fake.cdn_requests == []


def test_the_bot_process_imports_no_ml_stack_for_uploads_or_parameters():
    import subprocess
    import sys

    code = ("import sys, bot.app, cogs.pony, cogs.upscale, cogs.parameters, bot.uploads, "
            "ponybot_request.drawable, ponybot_core.downloads, ponybot_core.image_parameters\n"
            "print(','.join(m for m in ('torch', 'diffusers', 'transformers', 'spandrel') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
