"""The picture check end to end (inference/safety): real discord.py against the fake Discord,
real Redis, the tiny pipeline, and a tiny classifier in the format the worker loads whose
verdict the test sets (ponybot_testkit/tiny_classifier.py: it flags pictures brighter than a
cut-off). A flagged picture is never posted in a channel that is not age-restricted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from ponybot_core.config import Config, LoadedConfig
from ponybot_core.custom_ids import Action, custom_id
from ponybot_core.keys import Keys
from ponybot_core.queue import QueueReads
from ponybot_testkit.tiny_classifier import FLAG_ALL, brightness, save_tiny_classifier
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, NSFW_CHANNEL_ID, USER_ID

MANAGE_GUILD = 1 << 5


@pytest.fixture
def classifier_dir(tmp_path: Path) -> Path:
    return tmp_path / "classifier"


@pytest.fixture
def settings(settings: LoadedConfig, classifier_dir: Path) -> LoadedConfig:
    config = Config.model_validate({**settings.config.model_dump(),
                                    "safety": {"path": str(classifier_dir)}})
    return settings.model_copy(update={"config": config})


async def ask(fake, channel_id: int = CHANNEL_ID, **options):
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    itx = await fake.invoke("pony", options, guild_id=GUILD_ID, channel_id=channel_id,
                            user_id=USER_ID)
    await itx.wait_response(timeout=5)
    await fake.wait_for(lambda: bool(itx.original.attachments and itx.original.embeds),
                        timeout=60, message="the result")
    return itx


def job_id_of(message) -> str:
    return str(message.embeds[0]["footer"]["text"]).removeprefix("job ")


def told_privately(fake) -> list[str]:
    return [m.content for m in fake.messages.values()
            if m.ephemeral and "picture check" in m.content]


def buttons(message) -> set[str]:
    return {c["custom_id"] for row in message.components for c in row["components"]}


async def record(redis, job_id: str) -> str:
    state = await QueueReads(redis, Keys()).state(job_id)
    assert state is not None
    return state.picture_check


async def test_a_flagged_picture_is_not_posted_in_an_ordinary_channel_and_its_requester_is_told(
        fake, bot, redis, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    await start_worker()
    itx = await ask(fake)
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png"), shown.filename
    assert "not posted" in itx.original.content
    # The private note follows the result.
    await fake.wait_for(lambda: any("explicit 0.98" in text for text in told_privately(fake)),
                        timeout=30, message="the private note")
    assert (await record(redis, job_id_of(itx.original))).startswith("withheld 1;")


async def test_the_same_picture_in_an_age_restricted_channel_is_posted(
        fake, bot, redis, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    await start_worker()
    itx = await ask(fake, NSFW_CHANNEL_ID)
    [shown] = itx.original.attachments
    assert "withheld" not in shown.filename and not shown.filename.startswith("SPOILER_")
    assert not told_privately(fake)
    assert await record(redis, job_id_of(itx.original)) == ""


async def test_a_server_that_chose_spoilers_gets_the_flagged_picture_behind_one(
        fake, bot, redis, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    chose = await fake.invoke("safety flagged", {"action": "spoiler"}, guild_id=GUILD_ID,
                              channel_id=CHANNEL_ID, user_id=USER_ID, permissions=MANAGE_GUILD)
    await chose.wait_response(timeout=5)
    assert "behind a spoiler" in chose.original.content
    await start_worker()
    itx = await ask(fake)
    [shown] = itx.original.attachments
    assert shown.filename.startswith("SPOILER_pony_"), shown.filename
    assert (await record(redis, job_id_of(itx.original))).startswith("spoilered 1;")


async def test_a_server_can_send_flagged_pictures_to_its_age_restricted_channel(
        fake, bot, redis, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    chose = await fake.invoke("safety flagged", {"action": "redirect",
                                                 "channel": NSFW_CHANNEL_ID},
                              guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID,
                              permissions=MANAGE_GUILD)
    await chose.wait_response(timeout=5)
    await start_worker()
    itx = await ask(fake)
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png")
    job_id = job_id_of(itx.original)
    await fake.wait_for(lambda: any(
        m.channel_id == NSFW_CHANNEL_ID and any(a.filename.startswith(f"pony_{job_id}_")
                                                for a in m.attachments)
        for m in fake.messages.values()), timeout=30, message="the redirected picture")
    assert not any(m.channel_id == CHANNEL_ID and any(
        not a.filename.endswith("_withheld.png") for a in m.attachments)
        for m in fake.messages.values())


async def test_a_redirect_to_a_channel_that_is_not_age_restricted_is_refused(fake, bot):
    chose = await fake.invoke("safety flagged", {"action": "redirect", "channel": CHANNEL_ID},
                              guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID,
                              permissions=MANAGE_GUILD)
    await chose.wait_response(timeout=5)
    assert chose.ephemeral and "is not age-restricted" in chose.original.content


async def test_a_missing_classifier_withholds_every_picture_rather_than_post_it_unchecked(
        fake, bot, redis, start_worker, classifier_dir):
    assert not classifier_dir.exists()
    await start_worker()
    itx = await ask(fake, count=2)
    assert [a.filename.endswith("_withheld.png") for a in itx.original.attachments] == \
        [True, True]
    assert "picture check is not working" in itx.original.content
    assert (await record(redis, job_id_of(itx.original))).startswith("withheld all 2")


async def test_a_batch_of_four_with_one_flagged_posts_the_other_three_with_their_buttons(
        fake, bot, redis, start_worker, classifier_dir):
    worker = await start_worker()
    # The same four pictures, first where they are not checked, to see how bright each is.
    first = await ask(fake, NSFW_CHANNEL_ID, count=4, seed=1234)
    seen = brightness([Image.open(io.BytesIO(a.data)) for a in first.original.attachments])
    ranked = sorted(seen)
    # Flag only the brightest: the cut-off lies between it and the next.
    save_tiny_classifier(classifier_dir, brighter_than=(ranked[-1] + ranked[-2]) / 2)
    brightest = seen.index(ranked[-1])
    itx = await ask(fake, count=4, seed=1234)
    names = [a.filename for a in itx.original.attachments]
    assert [n.endswith("_withheld.png") for n in names] == [i == brightest for i in range(4)]
    job_id = job_id_of(itx.original)
    shown = buttons(itx.original)
    for i in range(4):
        assert (custom_id(Action.VARY, job_id, i) in shown) is (i != brightest)
    assert worker.worker.pictures.configured


@pytest.mark.parametrize("flagged", ["spoiler", "withhold"])
@pytest.mark.parametrize("point", ["before_post", "after_post"])
async def test_an_error_between_the_check_and_the_post_neither_posts_unchecked_nor_twice(
        point, flagged, fake, bot, redis, start_worker, classifier_dir):
    from inference.loop import faults
    from ponybot_core.queue import JobStatus
    from tests.conftest import queued_job_id, until_finished

    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    chose = await fake.invoke("safety flagged", {"action": flagged}, guild_id=GUILD_ID,
                              channel_id=CHANNEL_ID, user_id=USER_ID, permissions=MANAGE_GUILD)
    await chose.wait_response(timeout=5)
    itx = await fake.invoke("pony", {"tags": "pony, solo"}, guild_id=GUILD_ID,
                            channel_id=CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    job_id = queued_job_id(itx)
    faults.arm(f"{point}=raise")
    try:
        await start_worker()
        assert await until_finished(redis, [job_id]) == [JobStatus.POSTED]
    finally:
        faults.arm("")
    # One result edit: after the post, the retry finds it on Discord (a spoilered file too).
    edits = [r for r in fake.requests
             if r[0] == "PATCH" and r[1].startswith("/webhooks/") and r[2] == 200]
    assert len(edits) == 1
    [shown] = itx.original.attachments
    assert shown.filename.startswith("SPOILER_") if flagged == "spoiler" else \
        shown.filename.endswith("_withheld.png")
    assert (await record(redis, job_id)).startswith(
        "spoilered 1;" if flagged == "spoiler" else "withheld 1;")


async def test_an_uploaded_picture_upscaled_in_an_ordinary_channel_is_checked_after_upscaling(
        fake, redis, start_worker, classifier_dir, settings, tmp_path):
    from ponybot_core.config import UpscalerEntry
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth
    from ponybot_testkit.world import running_bot

    upscaler = UpscalerEntry(id="tiny-esrgan", name="Tiny ESRGAN", path=save_pth(
        realesrgan_state_dict(), tmp_path / "tiny-x4.pth"))
    with_upscaler = settings.model_copy(update={"config": Config.model_validate(
        {**settings.config.model_dump(), "upscalers": [upscaler.model_dump()]})})
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    upload = io.BytesIO()
    Image.new("RGB", (40, 24), (250, 250, 250)).save(upload, format="PNG")
    async with running_bot(with_upscaler, fake):
        await start_worker(settings_=with_upscaler)
        itx = await fake.invoke("upscale", {"image": ("art.png", upload.getvalue())},
                                guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID)
        await itx.wait_response(timeout=5)
        await fake.wait_for(lambda: bool(itx.original.attachments), timeout=60,
                            message="the upscale's result")
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png"), shown.filename
    # The placeholder has the size of what would have been posted: the upscaled picture.
    assert Image.open(io.BytesIO(shown.data)).size == (160, 96)
    assert (await record(redis, job_id_of(itx.original))).startswith("withheld 1;")


def with_progress(settings: LoadedConfig) -> LoadedConfig:
    worker = settings.config.worker.model_copy(update={"progress": True,
                                                       "progress_interval_s": 1.0})
    return settings.model_copy(update={"config": settings.config.model_copy(
        update={"worker": worker})})


def previews_shown(message) -> list[str]:
    return [e["content"] for e in message.edits
            if any(a.get("filename") == "progress.jpg" for a in e.get("attachments") or [])]


async def test_a_job_whose_pictures_are_checked_shows_its_progress_without_a_preview(
        fake, bot, settings, start_worker, classifier_dir):
    # The preview is the picture being drawn, not checked: in an ordinary channel it would
    # show what the check then withholds (the last previews are nearly the picture).
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    itx = await fake.invoke("pony", {"tags": "luna, night", "steps": 60, "size": "portrait"},
                            guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    await start_worker(settings_=with_progress(settings))
    await fake.wait_for(lambda: any(a.filename.startswith("pony_")
                                    for a in itx.original.attachments), timeout=120,
                        message="the result")
    [final] = itx.original.attachments
    assert final.filename.endswith("_withheld.png"), final.filename  # the check ran
    assert any("sampling" in (e.get("content") or "") for e in itx.original.edits), \
        "no progress shown at all"
    assert previews_shown(itx.original) == []


async def test_a_job_in_an_age_restricted_channel_still_shows_previews(
        fake, bot, settings, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    itx = await fake.invoke("pony", {"tags": "luna, night", "steps": 60, "size": "portrait"},
                            guild_id=GUILD_ID, channel_id=NSFW_CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    await start_worker(settings_=with_progress(settings))
    await fake.wait_for(lambda: any(a.filename.startswith("pony_")
                                    for a in itx.original.attachments), timeout=120,
                        message="the result")
    assert previews_shown(itx.original) != []


async def queued_in_the_age_restricted_channel(fake):
    itx = await fake.invoke("pony", {"tags": "twilight sparkle, unicorn, solo"},
                            guild_id=GUILD_ID, channel_id=NSFW_CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def test_a_picture_queued_in_an_age_restricted_channel_is_checked_once_it_is_not(
        fake, bot, redis, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    itx = await queued_in_the_age_restricted_channel(fake)
    # An admin lifts the channel's age restriction while the job waits in the queue.
    fake.add_channel(GUILD_ID, NSFW_CHANNEL_ID, name="after-dark", nsfw=False)
    await start_worker()
    await fake.wait_for(lambda: bool(itx.original.attachments and itx.original.embeds),
                        timeout=60, message="the result")
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png"), shown.filename
    assert (await record(redis, job_id_of(itx.original))).startswith("withheld 1;")


async def test_a_picture_for_a_channel_discord_cannot_describe_now_is_checked(
        fake, bot, redis, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    itx = await queued_in_the_age_restricted_channel(fake)
    # The worker cannot see the channel any more (Missing Access): fail closed, check.
    fake.inject("GET", rf"/channels/{NSFW_CHANNEL_ID}$", 403, count=100)
    await start_worker()
    await fake.wait_for(lambda: bool(itx.original.attachments and itx.original.embeds),
                        timeout=60, message="the result")
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png"), shown.filename


@pytest.mark.parametrize("point", ["before_post", "after_post"])
async def test_a_crash_around_the_post_still_delivers_the_redirected_picture_once(
        point, fake, bot, redis, start_worker, classifier_dir):
    from inference.loop import faults
    from ponybot_core.queue import JobStatus
    from tests.conftest import queued_job_id, until_finished

    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    chose = await fake.invoke("safety flagged", {"action": "redirect",
                                                 "channel": NSFW_CHANNEL_ID},
                              guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID,
                              permissions=MANAGE_GUILD)
    await chose.wait_response(timeout=5)
    itx = await fake.invoke("pony", {"tags": "pony, solo"}, guild_id=GUILD_ID,
                            channel_id=CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    job_id = queued_job_id(itx)
    faults.arm(f"{point}=raise")
    try:
        await start_worker()
        assert await until_finished(redis, [job_id]) == [JobStatus.POSTED]
    finally:
        faults.arm("")
    redirected = [m for m in fake.messages.values() if m.channel_id == NSFW_CHANNEL_ID
                  and any(a.filename.startswith(f"pony_{job_id}_") for a in m.attachments)]
    assert len(redirected) == 1
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png"), shown.filename


async def test_a_job_edited_in_place_after_its_channel_lost_its_age_restriction_is_checked(
        fake, bot, redis, start_worker, classifier_dir):
    from ponybot_core.custom_ids import Action
    from tests.conftest import queued_job_id
    from tests.test_edit import form_of, open_form

    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    itx = await queued_in_the_age_restricted_channel(fake)
    job_id = queued_job_id(itx)
    fake.add_channel(GUILD_ID, NSFW_CHANNEL_ID, name="after-dark", nsfw=False)
    # The edit keeps the job's own decision (made when it was queued, in a restricted channel).
    form_id, values = form_of(await open_form(fake, itx.original.id, Action.EDIT_QUEUED, job_id))
    answer = await fake.submit_modal(form_id, {**values, "tags": "rarity, gem"},
                                     channel_id=NSFW_CHANNEL_ID, user_id=USER_ID)
    await answer.wait_response(timeout=5)
    assert "keeps its place" in answer.original.content
    await start_worker()
    await fake.wait_for(lambda: bool(itx.original.attachments and itx.original.embeds),
                        timeout=60, message="the result")
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png"), shown.filename


async def test_a_redirect_channel_that_lost_its_age_restriction_gets_nothing_and_the_result_says_so(
        fake, bot, redis, start_worker, classifier_dir):
    save_tiny_classifier(classifier_dir, brighter_than=FLAG_ALL)
    chose = await fake.invoke("safety flagged", {"action": "redirect",
                                                 "channel": NSFW_CHANNEL_ID},
                              guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID,
                              permissions=MANAGE_GUILD)
    await chose.wait_response(timeout=5)
    fake.add_channel(GUILD_ID, NSFW_CHANNEL_ID, name="after-dark", nsfw=False)
    await start_worker()
    itx = await ask(fake)
    [shown] = itx.original.attachments
    assert shown.filename.endswith("_withheld.png"), shown.filename
    assert "not posted anywhere" in itx.original.content
    assert "instead" not in itx.original.content
    assert not any(m.channel_id == NSFW_CHANNEL_ID and m.attachments
                   for m in fake.messages.values())
