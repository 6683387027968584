"""Entry points that used to make their jobs their own way, end to end on real discord.py against
the fake Discord and a real Redis: Draw this follows the channel's rules as `/pony` does, a
queued job's edit is judged by the job's own channel, a button copied into another channel is
refused, and the Parameters menu keeps one small Redis key per picture however often it is
used."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ponybot_core.custom_ids import Action, custom_id
from ponybot_core.keys import Keys
from ponybot_core.queue import QueueReads
from ponybot_testkit.world import (
    CHANNEL_ID,
    GUILD_ID,
    NSFW_CHANNEL_ID,
    OTHER_CHANNEL_ID,
    OTHER_USER_ID,
    USER_ID,
)
from tests.conftest import pony, queued_job_id


def png(parameters: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters)
    out = io.BytesIO()
    Image.new("RGB", (32, 48), (90, 40, 200)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def ours(prompt: str) -> str:
    """The parameters of a picture drawn with the tests' tiny model."""
    return (f"{prompt}\nSteps: 2, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 64x64, "
            "Model: Tiny Pony")


async def parameters_answer(fake, message):
    """Apps → Parameters on `message`, by the test user: the private answer once it is there."""
    itx = await fake.invoke_on_message("Parameters", message.id, user_id=USER_ID)
    await itx.wait_response(timeout=3)
    await fake.wait_for(lambda: itx.original is not None and itx.original.edits, timeout=10)
    return itx.original


def draw_button(answer) -> str:
    [draw] = [c["custom_id"] for row in answer.components for c in row["components"]]
    return str(draw)


async def drawn_job(fake, redis, prompt: str, channel_id: int = CHANNEL_ID):
    """Draw this on a picture of ours posted in `channel_id`: the job it queued."""
    message = fake.post_as_user(channel_id, OTHER_USER_ID, files=[("ours.png", png(ours(prompt)))])
    answer = await parameters_answer(fake, message)
    click = await fake.click(answer.id, draw_button(answer), user_id=USER_ID)
    await click.wait_response(timeout=5)
    assert not click.ephemeral, click.original.content
    job = await QueueReads(redis, Keys()).job(queued_job_id(click))
    assert job is not None
    return job, click


# --- Draw this and the channel's rules (issue 16, defect 3) -------------------------------------


@pytest.mark.parametrize("rating", ["suggestive", "rating:suggestive", "Rating: Suggestive!"])
async def test_draw_this_outside_age_restricted_channels_draws_safe_with_the_channels_negatives(
        fake, bot, redis, rating):
    job, click = await drawn_job(fake, redis, f"{rating}, pony, solo")

    assert job.prompt == "safe, pony, solo"
    assert "explicit" in job.negative_prompt.split(", ")  # the tiny model's channel negative
    assert "so the rating is `safe`" in click.original.content


async def test_draw_this_in_an_age_restricted_channel_draws_the_caption_as_written(
        fake, bot, redis):
    job, _ = await drawn_job(fake, redis, "suggestive, pony, solo", channel_id=NSFW_CHANNEL_ID)

    assert (job.prompt, job.negative_prompt) == ("suggestive, pony, solo", "")


# --- a queued job's edit (issue 16, defect 8) -----------------------------------------------------


async def submit_edit_from(fake, job_id: str, tags: str, *, channel_id: int):
    itx = await fake.submit_modal(custom_id(Action.EDIT_QUEUED, job_id),
                                  {"tags": tags, "negative": "", "seed": "3", "steps": "2"},
                                  guild_id=GUILD_ID, channel_id=channel_id, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def test_a_queued_jobs_edit_sent_from_an_age_restricted_channel_keeps_its_channels_rules(
        fake, bot, redis):
    queued = await pony(fake, tags="pony, solo")  # in a channel that is not age-restricted
    job_id = queued_job_id(queued)
    reads = QueueReads(redis, Keys())
    before = await reads.job(job_id)

    refused = await submit_edit_from(fake, job_id, "explicit, pony", channel_id=NSFW_CHANNEL_ID)

    assert refused.ephemeral and "needs an age-restricted channel" in refused.original.content
    assert await reads.job(job_id) == before

    edited = await submit_edit_from(fake, job_id, "suggestive, pony", channel_id=NSFW_CHANNEL_ID)

    assert edited.ephemeral and "keeps its place" in edited.original.content
    job = await reads.job(job_id)
    assert job is not None and job.channel_id == CHANNEL_ID
    assert job.prompt.startswith("safe, ") and "suggestive" not in job.prompt
    assert "explicit" in job.negative_prompt


# --- a button copied into another channel (red team, defect 8) ---------------------------------


def forged_button(fake, channel_id: int, button_id: str):
    """A message in `channel_id` carrying a button whose custom_id was copied from a message
    elsewhere: what a forged interaction would name (Discord itself only delivers clicks on
    the buttons of the message clicked, and discord.py only answers those)."""
    message = fake.post_as_user(channel_id, OTHER_USER_ID, content="look")
    message.components = [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "copied", "custom_id": button_id}]}]
    return message


@pytest.mark.parametrize(("action", "where"), [(Action.REROLL, CHANNEL_ID),
                                               (Action.EDIT, OTHER_CHANNEL_ID)],
                         ids=["re-roll into a channel for all ages", "edit from another server"])
async def test_a_button_copied_from_another_channel_is_refused_privately(
        fake, bot, redis, action, where):
    itx = await fake.invoke("pony", {"tags": "pony, solo"}, channel_id=NSFW_CHANNEL_ID,
                            user_id=USER_ID)
    await itx.wait_response(timeout=5)
    job_id = queued_job_id(itx)
    reads = QueueReads(redis, Keys())
    before = await reads.snapshot(all_guilds=True)

    button = custom_id(action, job_id)
    click = await fake.click(forged_button(fake, where, button).id, button,
                             user_id=OTHER_USER_ID)
    await click.wait_response(timeout=5)

    assert click.response_type != 9, "the form showing the job's tags was opened"
    assert click.ephemeral, click.original.content
    assert "belongs to a message in another channel" in click.original.content
    after = await reads.snapshot(all_guilds=True)
    assert [j.id for j, _ in after.queued] == [j.id for j, _ in before.queued]


# --- one drawable key per picture (issue 16, defect 6) ----------------------------------------


async def test_the_parameters_menu_keeps_one_key_per_picture_however_often_it_is_used(
        fake, bot, redis):
    picture = png(ours("scr100, pinkie pie, balloons"))
    first = fake.post_as_user(CHANNEL_ID, OTHER_USER_ID, files=[("ours.png", picture)])
    again = fake.post_as_user(CHANNEL_ID, USER_ID, files=[("copy.png", picture)])

    buttons = {draw_button(await parameters_answer(fake, message))
               for message in (first, first, first, again)}

    assert len(buttons) == 1
    assert len(await redis.keys(Keys().drawable("*"))) == 1
    other = fake.post_as_user(CHANNEL_ID, OTHER_USER_ID,
                              files=[("other.png", png(ours("scr100, rarity")))])
    await parameters_answer(fake, other)
    assert len(await redis.keys(Keys().drawable("*"))) == 2


def with_junk(n: int) -> str:
    """The parameters of a picture of ours whose settings line carries ~60 KB of pairs that
    Draw this never reads."""
    junk = ", ".join(f"Junk{i} {n}: {'x' * 40}" for i in range(1200))
    return (f"pony, solo\nSteps: 2, Sampler: DDIM, CFG scale: 7, Seed: {n}, Size: 64x64, "
            f"Model: Tiny Pony, {junk}")


async def test_a_drawable_key_holds_only_what_draw_this_uses(fake, bot, redis):
    for n in range(3):
        message = fake.post_as_user(CHANNEL_ID, OTHER_USER_ID,
                                    files=[(f"p{n}.png", png(with_junk(n)))])
        answer = await parameters_answer(fake, message)
        assert answer.components, answer.embeds  # Draw this offered

    keys = await redis.keys(Keys().drawable("*"))
    sizes = [await redis.memory_usage(k) for k in keys]
    assert len(keys) == 3
    # Prompt, negative, steps, sampler, CFG, seed, size, model: well under 8 KB here.
    assert max(sizes) < 8_000, sizes
