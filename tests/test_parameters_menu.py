"""The **Parameters** message context menu and its **Draw this** button, end to end on real
discord.py against the fake Discord, real Redis and the tiny pipeline: what a picture says it
was drawn with, read from PNG text or WebP/JPEG EXIF, shown privately; drawn again, as an
ordinary queued job, when the picture is one of ours; bad pictures refused; hostile ones
(issue 16) read without decoding a pixel and without holding up the event loop."""

from __future__ import annotations

import asyncio
import io
import sys
from types import SimpleNamespace

import discord
import numpy as np
import pytest
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.answering import OUR_FAULT, what_to_say
from bot.errors import QueueUnavailable
from ponybot_core.config import Config, LoadedConfig, UploadsConfig
from ponybot_core.image_parameters import PARAMETERS_LIMIT, parameters_exif
from ponybot_core.keys import Keys
from ponybot_core.queue import QueueReads
from ponybot_testkit.hostile_pictures import (
    BAD_EXIF,
    apng_bomb,
    jpeg_with_app1,
    long_line_png,
    png_with_text,
    truncated,
    webp_with_exif,
    with_bad_crc,
    ztxt_bomb_png,
)
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, OTHER_USER_ID, USER_ID, running_bot
from tests.test_uploads import bomb_png

OURS = ("scr100, pinkie pie, balloons\nNegative prompt: explicit\nSteps: 3, Sampler: DDIM, "
        "CFG scale: 6, Seed: 777, Size: 64x96, Model: Tiny Pony")
THEIRS = ("1girl, pony ears\nNegative prompt: lowres\nSteps: 30, Sampler: Euler a, CFG scale: 7, "
          "Seed: 12, Size: 512x512, Model hash: abc123, Model: anything-v3")


def png(parameters: str | None = None, size: tuple[int, int] = (32, 48)) -> bytes:
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    out = io.BytesIO()
    Image.new("RGB", size, (90, 40, 200)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def exif_picture(fmt: str, parameters: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 48), (90, 40, 200)).save(out, format=fmt,
                                                   exif=parameters_exif(parameters))
    return out.getvalue()


async def parameters_of(fake, message, *, user_id: int = USER_ID):
    """Apps → Parameters on `message`: the private answer, once it is there."""
    itx = await fake.invoke_on_message("Parameters", message.id, user_id=user_id)
    response = await itx.wait_response(timeout=3)
    assert response["type"] == 5  # "thinking…" at once: the download may take longer than 3 s
    # The first follow-up replaces the thinking message.
    await fake.wait_for(lambda: itx.original is not None and itx.original.edits, timeout=10)
    return itx


def fields(message) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}


def buttons(message) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row["components"]]


def pixels(attachment) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(attachment.data)).convert("RGB")).astype(int)


async def nothing_queued(redis: Redis) -> bool:
    snapshot = await QueueReads(redis, Keys()).snapshot(all_guilds=True)
    return not snapshot.queued and not snapshot.running


def post(fake, *files, content: str = ""):
    return fake.post_as_user(CHANNEL_ID, OTHER_USER_ID, content, files=list(files))


# --- reading ---------------------------------------------------------------------------------


async def test_parameters_of_our_own_result_and_draw_this_draws_the_same_picture(
        fake, bot, start_worker, redis):
    await start_worker()
    asked = await fake.invoke("pony", {"tags": "pinkie pie, balloons", "seed": 4321,
                                       "size": "portrait"},
                              guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID)
    await asked.wait_response(timeout=5)
    await fake.wait_for(lambda: asked.original.attachments, timeout=30)
    result = asked.original

    itx = await parameters_of(fake, result)

    answer = itx.original
    assert itx.ephemeral and answer.ephemeral
    shown = fields(answer)
    assert "pinkie pie" in shown["Prompt"] and shown["Seed"] == "4321"
    assert (shown["Steps"], shown["Sampler"], shown["Size"]) == ("2", "DDIM", "64×96")
    assert shown["Model"] == "Tiny Pony (`tiny`)"
    [draw] = buttons(answer)
    assert draw.startswith("pony:draw:")

    click = await fake.click(answer.id, draw, user_id=USER_ID)
    await click.wait_response(timeout=5)
    assert not click.ephemeral and "drawn from a picture's parameters" in click.original.content
    await fake.wait_for(lambda: click.original.attachments, timeout=30)
    # Same model, prompt, seed, size and sampler: the same pixels.
    assert np.array_equal(pixels(click.original.attachments[0]), pixels(result.attachments[0]))


@pytest.mark.parametrize("picture", [
    ("theirs.png", png(THEIRS)),
    ("theirs.webp", exif_picture("WEBP", THEIRS)),
    ("theirs.jpg", exif_picture("JPEG", THEIRS)),
], ids=["png-text", "webp-exif", "jpeg-exif"])
async def test_another_tools_parameters_are_shown_without_draw_this(fake, bot, redis, picture):
    message = post(fake, picture)

    answer = (await parameters_of(fake, message)).original

    shown = fields(answer)
    assert "1girl, pony ears" in shown["Prompt"] and "lowres" in shown["Negative prompt"]
    assert (shown["Seed"], shown["Steps"], shown["Sampler"], shown["CFG"]) == \
        ("12", "30", "Euler a", "7")
    assert shown["Model"] == "anything-v3"
    assert "not one of this bot's models" in shown["Draw this"]
    assert buttons(answer) == []
    assert await redis.keys(Keys().drawable("*")) == []


async def test_a_picture_of_ours_posted_by_anyone_in_webp_can_be_drawn(fake, bot, redis):
    message = post(fake, ("ours.webp", exif_picture("WEBP", OURS)))

    answer = (await parameters_of(fake, message)).original

    [draw] = buttons(answer)
    stored = await redis.get(Keys().drawable(draw.rsplit(":", 1)[-1]))
    assert stored is not None and b"pinkie pie" in stored
    assert 0 < await redis.ttl(Keys().drawable(draw.rsplit(":", 1)[-1])) <= 3600


async def test_draw_this_after_the_parameters_expired_says_so(fake, bot, redis):
    answer = (await parameters_of(fake, post(fake, ("ours.png", png(OURS))))).original
    [draw] = buttons(answer)
    await redis.delete(Keys().drawable(draw.rsplit(":", 1)[-1]))

    click = await fake.click(answer.id, draw, user_id=USER_ID)
    await click.wait_response(timeout=5)

    assert click.ephemeral and "expired" in click.original.content
    assert await nothing_queued(redis)


async def test_draw_this_is_checked_against_the_channel_like_every_button(fake, bot, redis):
    explicit = OURS.replace("scr100, pinkie pie", "explicit, pinkie pie")
    answer = (await parameters_of(fake, post(fake, ("ours.png", png(explicit))))).original
    [draw] = buttons(answer)

    click = await fake.click(answer.id, draw, user_id=USER_ID)
    await click.wait_response(timeout=5)

    assert click.ephemeral and "age-restricted" in click.original.content
    assert await nothing_queued(redis)


async def test_what_this_bot_cannot_draw_as_written_is_brought_within_its_limits(
        fake, bot, start_worker, redis):
    await start_worker()
    odd = OURS.replace("Steps: 3", "Steps: 500").replace("Sampler: DDIM", "Sampler: LMS") \
        .replace("Size: 64x96", "Size: 1024x1024")
    answer = (await parameters_of(fake, post(fake, ("ours.png", png(odd))))).original
    [draw] = buttons(answer)

    click = await fake.click(answer.id, draw, user_id=USER_ID)
    await click.wait_response(timeout=5)

    content = click.original.content
    assert "steps 500 → 60" in content
    assert "sampler `LMS` is not offered here" in content
    assert "1024×1024 is not a size this bot draws: drawn at 64×64" in content


# --- refusing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("files", "said"), [
    ([], "no picture attached"),
    ([("pony.png", b"<html>not a picture</html>" * 4)], "could not read `pony.png` as a picture"),
    ([("bomb.png", bomb_png())], "100000×100000 pixels"),
    ([("big.png", png() + b"\0" * (10 * 1024 * 1024))], "at most 10 MiB"),
], ids=["no picture", "not an image", "a decompression bomb", "too big"])
async def test_a_message_without_a_usable_picture_is_refused_without_a_download(
        fake, bot, files, said):
    message = post(fake, *files, content="hello")

    itx = await fake.invoke_on_message("Parameters", message.id, user_id=USER_ID)
    await itx.wait_response(timeout=3)

    assert itx.ephemeral and said in itx.original.content
    assert fake.cdn_requests == []


async def test_a_picture_without_parameters_says_so(fake, bot):
    itx = await parameters_of(fake, post(fake, ("plain.png", png())))

    assert itx.ephemeral and "carries no generation parameters" in itx.original.content


async def test_bytes_that_are_not_what_discord_described_are_refused_after_download(
        fake, bot):
    message = post(fake, ("ours.png", png(OURS)))
    message.attachments[0].served = b"GIF89a" + b"\0" * 200  # not what Discord measured

    itx = await parameters_of(fake, message)

    assert "not a PNG, JPEG or WebP picture" in itx.original.content
    assert len(fake.cdn_requests) == 1


async def test_a_picture_not_on_discords_hosts_is_refused_and_never_fetched(
        fake, settings: LoadedConfig, redis):
    raw = settings.config.model_dump()
    raw["uploads"] = {**raw["uploads"], "hosts": UploadsConfig().hosts}
    discord_only = settings.model_copy(update={"config": Config.model_validate(raw)})
    async with running_bot(discord_only, fake):
        message = post(fake, ("ours.png", png(OURS)))
        itx = await fake.invoke_on_message("Parameters", message.id, user_id=USER_ID)
        await itx.wait_response(timeout=3)

    assert itx.ephemeral and "not on Discord's attachment servers" in itx.original.content
    assert fake.cdn_requests == []


# --- hostile pictures (issue 16) ----------------------------------------------------------------


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def parsed_on_loop(bot, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each parameters text the menu parses: whether it was parsed on the event loop."""
    seen: list[bool] = []
    # load_extension executes the cog's module anew: spy on the one the bot runs.
    cog_module = sys.modules["cogs.parameters"]
    real = cog_module.parse_parameters

    def spy(*args, **kwargs):
        seen.append(on_event_loop())
        return real(*args, **kwargs)

    monkeypatch.setattr(cog_module, "parse_parameters", spy)
    return seen


@pytest.fixture
def pixels_decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every picture Pillow decodes while the test runs (the fake Discord measures JPEG and WebP
    attachments by opening them, which decodes nothing)."""
    seen: list[str] = []
    real = ImageFile.ImageFile.load

    def spy(self):
        seen.append(f"{self.format} {self.size}")
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


async def test_a_long_parameters_line_is_parsed_off_the_event_loop(fake, bot, parsed_on_loop):
    # 30 KB: what stalled the whole bot for 9 s, until another user's /pony was too late.
    message = post(fake, ("long.png", long_line_png(30_000)))

    answer = (await parameters_of(fake, message)).original

    assert parsed_on_loop == [False]
    shown = fields(answer)
    assert "pinkie pie" in shown["Prompt"] and shown["Negative prompt"].startswith("```\nlowres")
    assert "unnamed model" in shown["Draw this"]


async def test_parameters_longer_than_the_limit_are_shown_cut_and_say_so(fake, bot):
    message = post(fake, ("bomb.png", ztxt_bomb_png(4 << 20)))  # 4 MiB of text in 4 KB

    answer = (await parameters_of(fake, message)).original

    assert answer.ephemeral
    assert f"only its first {PARAMETERS_LIMIT:,} characters" in fields(answer)["Cut short"]


async def test_an_animated_png_bomb_is_answered_without_decoding_a_pixel(fake, bot,
                                                                           pixels_decoded):
    bomb = apng_bomb(frames=30, width=1024, height=1024, parameters=THEIRS)
    message = post(fake, ("bomb.png", bomb))

    answer = (await parameters_of(fake, message)).original

    assert pixels_decoded == []
    shown = fields(answer)
    assert (shown["Seed"], shown["Model"]) == ("12", "anything-v3")


async def test_text_that_would_overflow_discords_embed_is_shown_within_its_limits(fake, bot):
    huge = ("`" * 3000 + "\nNegative prompt: " + "n" * 3000 + "\nSteps: " + "9" * 4000
            + f", Sampler: {'s' * 3000}, CFG scale: 7, Seed: 1, Size: {'5' * 300}x5, "
            + f"Model: {'m' * 5000}")
    message = post(fake, ("huge.png", png(huge)))

    answer = (await parameters_of(fake, message)).original

    # Discord refuses a field over 1,024 characters or an embed over 6,000 (the fake checks
    # the 6,000): the whole answer would be lost.
    shown = fields(answer)
    assert shown["Prompt"].startswith("```\n`\u200b`") and "Not offered" in shown["Draw this"]
    assert all(len(value) <= 1024 for value in shown.values()), {
        name: len(value) for name, value in shown.items()}


@pytest.mark.parametrize(("picture", "reason"), [
    (("cut.png", truncated(png(), len(png()) - 20)), "cut off"),
    (("sum.png", with_bad_crc(png_with_text(THEIRS), b"tEXt")), "checksum"),
    (("exif.jpg", jpeg_with_app1(BAD_EXIF["not tiff"])), "EXIF"),
    (("exif.webp", webp_with_exif(BAD_EXIF["not tiff"])), "EXIF"),
], ids=["png cut off", "png bad checksum", "jpeg bad exif", "webp bad exif"])
async def test_a_damaged_picture_is_answered_once_privately_with_the_reason(
        fake, bot, redis, picture, reason):
    message = post(fake, picture)

    itx = await parameters_of(fake, message)

    said = itx.original.content
    assert itx.ephemeral and itx.followups == []
    assert f"`{picture[0]}` is damaged or not a picture we can read" in said and reason in said
    assert "Redis" not in said
    assert await nothing_queued(redis)


def test_only_a_redis_outage_is_called_one():
    click = SimpleNamespace(command=None, type=discord.InteractionType.component,
                            data={"custom_id": "pony:draw:x"})
    unavailable = str(QueueUnavailable())

    assert what_to_say(click, RedisConnectionError("gone")) == unavailable
    assert what_to_say(click, RedisTimeoutError("slow")) == unavailable
    # A picture Pillow cannot read, a full disk: not Redis, whatever OSError says.
    assert what_to_say(click, OSError("image file is truncated")) == OUR_FAULT
    assert what_to_say(click, EOFError()) == OUR_FAULT
    # Redis answered, with an error: a bug of ours, not an outage.
    assert what_to_say(click, ResponseError("WRONGTYPE")) == OUR_FAULT
