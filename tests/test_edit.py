"""✏️ Edit and redraw: the form under a result queues the edited job; the form on a queued message
changes the job where it waits, and loses cleanly to a worker that took it first. End to end
against the fake Discord (real discord.py, real Redis, the tiny pipeline), and the queue's edit
script on its own, in the style of test_job_lifecycle.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ponybot_core.custom_ids import Action, custom_id
from ponybot_core.job import Job
from ponybot_core.keys import Keys
from ponybot_core.queue import Consumer, JobStatus, Producer, QueueReads
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, OTHER_USER_ID, USER_ID, make_job
from tests.conftest import QueueParts, embed_fields, job_id_of, pony, queued_job_id, result

MANAGE_GUILD = 1 << 5


# --- helpers -----------------------------------------------------------------------------------


def form_of(itx) -> tuple[str, dict[str, str]]:
    """The modal the bot answered with (type 9): its custom_id and each input's prefilled
    value, by the input's custom_id."""
    assert itx.response_type == 9, itx.response
    data = itx.response["data"]
    values: dict[str, str] = {}

    def walk(components: list[dict[str, Any]]) -> None:
        for c in components:
            if c.get("type") == 4:
                values[c["custom_id"]] = c.get("value") or ""
            walk(c.get("components") or [])
            if "component" in c:
                walk([c["component"]])

    walk(data["components"])
    return data["custom_id"], values


async def open_form(fake, message_id: int, action: Action, job_id: str, *,
                    user_id: int = USER_ID):
    itx = await fake.click(message_id, custom_id(action, job_id), user_id=user_id)
    await itx.wait_response(timeout=5)
    return itx


async def submit(fake, form_id: str, values: dict[str, str], *, user_id: int = USER_ID):
    itx = await fake.submit_modal(form_id, values, channel_id=CHANNEL_ID, user_id=user_id)
    await itx.wait_response(timeout=5)
    return itx


async def unfinished(redis) -> int:
    snap = await QueueReads(redis, Keys()).snapshot(all_guilds=True)
    return len(snap.queued) + len(snap.running)


async def stored_job(redis, job_id: str) -> Job:
    job = await QueueReads(redis, Keys()).job(job_id)
    assert job is not None
    return job


# --- ✏️ under a result -------------------------------------------------------------------------


async def test_edit_on_a_result_opens_a_form_prefilled_with_tags_negative_seed_and_steps(
    fake, bot, start_worker
):
    await start_worker()
    message = await result(fake, await pony(fake, negative="grimdark", seed=42, steps=3))

    itx = await open_form(fake, message.id, Action.EDIT, job_id_of(message))

    form_id, values = form_of(itx)
    assert form_id == custom_id(Action.EDIT, job_id_of(message))
    assert values == {"tags": "twilight sparkle, unicorn, solo", "negative": "grimdark",
                      "seed": "42", "steps": "3"}


async def test_a_submitted_edit_queues_a_new_job_with_the_edits_on_the_same_model_and_size(
    fake, bot, redis, start_worker
):
    await start_worker()
    source = await result(fake, await pony(fake, model="tiny-v2", size="landscape", seed=1))
    form_id, _ = form_of(await open_form(fake, source.id, Action.EDIT, job_id_of(source)))

    itx = await submit(fake, form_id, {"tags": "pinkie pie, party", "negative": "rain",
                                       "seed": "7", "steps": "3"})

    assert itx.response_type == 4 and not itx.ephemeral
    assert "Queued" in itx.original.content and "edit of job" in itx.original.content
    edited = await result(fake, itx)
    assert edited.id != source.id and job_id_of(edited) != job_id_of(source)
    job = await stored_job(redis, job_id_of(edited))
    before = await stored_job(redis, job_id_of(source))
    assert (job.tags, job.negative_tags, job.seed, job.seeded, job.steps) == \
        ("pinkie pie, party", "rain", 7, True, 3)
    assert (job.model_id, job.width, job.height, job.count) == \
        (before.model_id, before.width, before.height, before.count)
    assert job.prompt == "safe pinkie_pie party"  # tiny-v2's caption language, anew
    assert "rain" in job.negative_prompt
    assert embed_fields(edited)["Size"] == "96×64" and embed_fields(edited)["Seed"] == "7"


async def test_an_empty_seed_in_the_form_draws_with_a_new_random_seed(
    fake, bot, redis, start_worker
):
    await start_worker()
    source = await result(fake, await pony(fake, seed=42))
    form_id, values = form_of(await open_form(fake, source.id, Action.EDIT, job_id_of(source)))

    itx = await submit(fake, form_id, {**values, "seed": ""})

    job = await stored_job(redis, queued_job_id(itx))
    assert not job.seeded and job.tags == "twilight sparkle, unicorn, solo"


@pytest.mark.parametrize(("values", "said"), [
    ({"seed": "forty-two"}, "`seed` must be a whole number"),
    ({"seed": "-1"}, "`seed` must be between"),
    ({"steps": "0"}, "`steps` must be between"),
    ({"steps": "999"}, "`steps` must be between"),
    ({"steps": "many"}, "`steps` must be a whole number"),
    ({"tags": "  "}, "tag"),
    ({"tags": "twilight sparkle, explicit"}, "explicit"),
])
async def test_bad_values_in_the_form_are_refused_privately_and_nothing_is_queued(
    fake, bot, redis, start_worker, values, said
):
    await start_worker()
    source = await result(fake, await pony(fake, seed=42))
    form_id, prefilled = form_of(await open_form(fake, source.id, Action.EDIT, job_id_of(source)))

    itx = await submit(fake, form_id, {**prefilled, **values})

    assert itx.ephemeral and said in itx.original.content, itx.original.content
    assert await unfinished(redis) == 0
    assert len(await redis.keys(Keys().job("*"))) == 1  # only the source's


async def test_an_edit_form_for_an_upscale_is_refused_privately(fake, bot, redis):
    # Upscales carry no Edit button (test_result_buttons); a crafted submit is refused too.
    job = make_job(kind="upscale", source_job_id="ab", source_index=0, guild_id=GUILD_ID)
    await Producer(redis, Keys(), result_ttl_s=600).enqueue(job)

    itx = await submit(fake, custom_id(Action.EDIT, job.id),
                       {"tags": "pony", "negative": "", "seed": "1", "steps": "2"})

    assert itx.ephemeral and "upscale has no tags to edit" in itx.original.content
    assert len(await redis.keys(Keys().job("*"))) == 1


# --- ✏️ on a queued message --------------------------------------------------------------------


async def test_edit_on_a_queued_message_changes_the_job_in_place_and_keeps_its_position(
    fake, bot, redis, start_worker
):
    waiting = [await pony(fake, tags=tags) for tags in ("applejack", "rarity", "fluttershy")]
    middle = queued_job_id(waiting[1])
    reads = QueueReads(redis, Keys())
    positions = await reads.positions()
    itx = await open_form(fake, waiting[1].original.id, Action.EDIT_QUEUED, middle)
    form_id, values = form_of(itx)
    assert form_id == custom_id(Action.EDIT_QUEUED, middle)
    assert values["tags"] == "rarity"

    answer = await submit(fake, form_id, {**values, "tags": "rarity, gem", "seed": "9"})

    assert answer.ephemeral and "keeps its place" in answer.original.content
    assert await reads.positions() == positions
    job = await stored_job(redis, middle)
    assert (job.tags, job.seed, job.seeded) == ("rarity, gem", 9, True)
    assert job.interaction_id == waiting[1].id  # the same job, answered on the same message
    await fake.wait_for(lambda: "gem" in waiting[1].original.content, timeout=5)
    # The worker draws what the job is now.
    await start_worker()
    drawn = await result(fake, waiting[1])
    assert "gem" in embed_fields(drawn)["Prompt"] and embed_fields(drawn)["Seed"] == "9"


async def test_edit_on_a_queued_message_after_the_job_started_says_so(fake, bot, redis):
    itx = await pony(fake)
    job_id = queued_job_id(itx)
    form_id, values = form_of(
        await open_form(fake, itx.original.id, Action.EDIT_QUEUED, job_id))
    # A worker takes the job while the form is open.
    [delivery] = await Consumer(redis, Keys(), "w", lease_s=60, result_ttl_s=600).take(count=1)

    answer = await submit(fake, form_id, {**values, "tags": "changed, too late"})

    assert answer.ephemeral and "already started" in answer.original.content
    assert (await stored_job(redis, job_id)).tags == delivery.job.tags
    clicked = await open_form(fake, itx.original.id, Action.EDIT_QUEUED, job_id)
    assert clicked.ephemeral and "already started" in clicked.original.content


async def test_only_the_requester_may_edit_a_queued_job(fake, bot, redis):
    itx = await pony(fake)
    job_id = queued_job_id(itx)

    clicked = await open_form(fake, itx.original.id, Action.EDIT_QUEUED, job_id,
                              user_id=OTHER_USER_ID)
    submitted = await submit(fake, custom_id(Action.EDIT_QUEUED, job_id),
                             {"tags": "hijacked", "negative": "", "seed": "1", "steps": "2"},
                             user_id=OTHER_USER_ID)

    for answer in (clicked, submitted):
        assert answer.ephemeral and "Only the person" in answer.original.content
    assert (await stored_job(redis, job_id)).tags == "twilight sparkle, unicorn, solo"


async def test_a_bad_edit_of_a_queued_job_changes_nothing(fake, bot, redis):
    itx = await pony(fake, seed=5)
    job_id = queued_job_id(itx)
    before = await stored_job(redis, job_id)

    answer = await submit(fake, custom_id(Action.EDIT_QUEUED, job_id),
                          {"tags": "rarity", "negative": "", "seed": "5", "steps": "999"})

    assert answer.ephemeral and "`steps` must be between" in answer.original.content
    assert await stored_job(redis, job_id) == before


async def test_a_form_opened_before_the_bot_restarted_still_works_after_it(
    fake, bot, settings, redis
):
    from ponybot_testkit.world import running_bot

    itx = await pony(fake)
    job_id = queued_job_id(itx)
    form_id, values = form_of(
        await open_form(fake, itx.original.id, Action.EDIT_QUEUED, job_id))
    await bot.close()

    async with running_bot(settings, fake):
        answer = await submit(fake, form_id, {**values, "tags": "after the restart"})
    assert answer.ephemeral and "keeps its place" in answer.original.content
    assert (await stored_job(redis, job_id)).tags == "after the restart"


# --- the queue's edit script -------------------------------------------------------------------


def edited(job: Job, **changes: object) -> Job:
    return Job.model_validate({**job.model_dump(), **changes})


async def test_an_edit_replaces_a_queued_jobs_parameters_and_keeps_its_place(queue: QueueParts):
    jobs = [make_job(guild_id=g) for g in (100, 100, 200)]
    for job in jobs:
        await queue.producer.enqueue(job)
    positions = await queue.reads.positions()

    new = edited(jobs[0], tags="edited", prompt="edited", seed=77, seeded=True)
    outcome = await queue.producer.edit_queued(new)

    assert outcome.done and outcome.was == JobStatus.QUEUED
    assert await queue.reads.positions() == positions
    state = await queue.reads.state(new.id)
    assert state is not None and state.job() == new
    raw = await queue.redis.hgetall(queue.keys.job(new.id))
    assert raw[b"batch_key"].decode() == new.batch_key() != jobs[0].batch_key()
    assert raw[b"model"].decode() == new.model_id
    assert raw[b"status"] == b"queued"


async def test_a_take_after_an_edit_reads_the_new_batch_key(queue: QueueParts):
    first, second = make_job(guild_id=100), make_job(guild_id=100)
    for job in (first, second):
        await queue.producer.enqueue(job)
    # Plain and compatible, they would share one call; seeded, the first runs on its own.
    await queue.producer.edit_queued(edited(first, seed=3, seeded=True))

    taken = await queue.consumer().take(count=2)

    assert [d.job_id for d in taken] == [first.id]
    assert taken[0].job.seed == 3


async def test_an_edit_loses_cleanly_when_a_worker_took_the_job_first(queue: QueueParts):
    job = make_job(guild_id=100)
    await queue.producer.enqueue(job)
    [delivery] = await queue.consumer().take(count=1)
    before = await queue.redis.hgetall(queue.keys.job(job.id))

    outcome = await queue.producer.edit_queued(edited(job, tags="too late"))

    assert not outcome.done and outcome.was == JobStatus.RUNNING
    assert await queue.redis.hgetall(queue.keys.job(job.id)) == before
    assert delivery.job.tags == job.tags


async def test_edits_racing_takes_leave_every_job_whole_either_way(queue: QueueParts):
    jobs = [make_job(guild_id=100 + i) for i in range(20)]
    for job in jobs:
        await queue.producer.enqueue(job)
    consumer = queue.consumer()

    async def take_all() -> list[Job]:
        out: list[Job] = []
        while len(out) < len(jobs):
            out += [d.job for d in await consumer.take(count=1)]
            await asyncio.sleep(0)
        return out

    async def edit_all() -> list[bool]:
        return [(await queue.producer.edit_queued(edited(j, tags=f"edited {j.id}"))).done
                for j in jobs]

    drawn, won = await asyncio.gather(take_all(), edit_all())

    by_id = {job.id: job for job in drawn}
    for job, edit_won in zip(jobs, won, strict=True):
        stored = (await queue.reads.state(job.id)).job()  # type: ignore[union-attr]
        expected = f"edited {job.id}" if edit_won else job.tags
        # What the worker draws is what Redis holds: the edit before the take, or none.
        assert by_id[job.id].tags == stored.tags == expected


async def test_an_edit_of_a_finished_or_unknown_job_changes_nothing(queue: QueueParts):
    cancelled = make_job(guild_id=100)
    await queue.producer.enqueue(cancelled)
    await queue.producer.cancel(cancelled.id)
    unknown = make_job(guild_id=100)

    assert (await queue.producer.edit_queued(edited(cancelled, tags="x"))).was == "cancelled"
    assert not (await queue.producer.edit_queued(unknown)).done
    assert not await queue.redis.exists(queue.keys.job(unknown.id))
    assert (await queue.reads.state(cancelled.id)).job().tags == cancelled.tags  # type: ignore


async def test_an_edit_cannot_move_a_job_to_another_server_or_user(queue: QueueParts):
    job = make_job(guild_id=100)
    await queue.producer.enqueue(job)
    before = await queue.redis.hgetall(queue.keys.job(job.id))

    for moved in (edited(job, guild_id=200), edited(job, user_id=6)):
        with pytest.raises(ValueError, match="another server or user"):
            await queue.producer.edit_queued(moved)
    assert await queue.redis.hgetall(queue.keys.job(job.id)) == before


def test_form_values_are_read_alike_from_labels_and_from_action_rows():
    from bot.edit_form import submitted_values

    labels = [{"type": 18, "id": 1, "component": {"type": 4, "custom_id": "tags",
                                                  "value": "rarity"}},
              {"type": 18, "id": 2, "component": {"type": 4, "custom_id": "seed", "value": ""}}]
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": "tags", "value": "rarity"}]},
            {"type": 1, "components": [{"type": 4, "custom_id": "seed", "value": ""}]}]
    assert submitted_values(labels) == submitted_values(rows) == {"tags": "rarity", "seed": ""}
