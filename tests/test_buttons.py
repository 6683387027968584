"""Every button is one entry of one table (ponybot_core.custom_ids.BUTTONS): what the worker and
the bot send is exactly what the bot's registered handlers parse back and rebuild, the
custom_ids on messages posted before an upgrade keep working after it, and a custom_id that is
not ours, or names nothing, is ignored or answered privately — never an unanswered click.

Real discord.py against the fake Discord, a real Redis; no worker."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from typing import Any

import discord
import pytest

from bot.answering import OUR_FAULT
from bot.edit_form import EditForm
from ponybot_core.custom_ids import BUTTONS, MAX_CUSTOM_ID, Action, SentButton, custom_id
from ponybot_core.keys import Keys
from ponybot_core.messages import queued_view, result_view, sent_view
from ponybot_core.queue import Consumer, JobStatus, Producer, QueueReads
from ponybot_testkit.world import CHANNEL_ID, GUILD_ID, OTHER_USER_ID, USER_ID, make_job

# --- the formats on the wire ------------------------------------------------------------------

# Each button as posted messages carry it today: custom_id, label, emoji, style. Messages stay
# in channels for years and their buttons are answered by whatever bot runs then: a change here
# breaks every button already posted.
ON_THE_WIRE = {
    Action.CANCEL: ("pony:cancel:0a1b", "Cancel", "✖️", "secondary"),
    Action.EDIT_QUEUED: ("pony:edit-queued:0a1b", "Edit", "✏️", "secondary"),
    Action.REROLL: ("pony:reroll:0a1b", "Re-roll", "🔁", "secondary"),
    Action.UPSCALE: ("pony:upscale:0a1b:3", "U4", None, "secondary"),
    Action.VARY: ("pony:vary:0a1b:0", "V1", None, "secondary"),
    Action.EDIT: ("pony:edit:0a1b", "Edit", "✏️", "secondary"),
    Action.HIRES: ("pony:hires:0a1b", "Hires", "⬆️", "secondary"),
    Action.DELETE: ("pony:delete:0a1b", "Delete", "🗑️", "danger"),
    Action.DRAW: ("pony:draw:0a1b", "Draw this", "🎨", "primary"),
}


@pytest.mark.parametrize("action", list(Action))
def test_the_custom_ids_and_looks_on_posted_messages_are_unchanged(action):
    index = 3 if action is Action.UPSCALE else 0 if action is Action.VARY else None
    button = BUTTONS[action].button("0a1b", index)
    assert (button.custom_id, button.label, button.emoji, button.style.value) == \
        ON_THE_WIRE[action]


def test_every_custom_id_fits_discords_limit_with_the_longest_id_and_index():
    for kind in BUTTONS.values():
        longest = kind.custom_id("f" * 32, 99 if kind.per_image else None)
        assert len(longest) <= MAX_CUSTOM_ID
    with pytest.raises(ValueError, match="required"):
        custom_id(Action.UPSCALE, "0a1b")
    with pytest.raises(ValueError, match="not a valid"):
        custom_id(Action.CANCEL, "not-hex")


def test_the_table_imports_neither_discord_nor_torch():
    """The worker's messages, the bot and the command line all read it."""
    code = ("import sys, ponybot_core.custom_ids\n"
            "print(','.join(m for m in ('discord', 'torch', 'diffusers', 'redis', 'bot', 'cogs')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- what is sent parses back -------------------------------------------------------------------


def registered(bot: Any) -> dict[re.Pattern[str], type]:
    # discord.py keeps the DynamicItem classes the cogs registered here, by template; it has
    # no public reader, and this is what it matches every click against.
    return dict(bot._connection._view_store._dynamic_items)


def handler_for(bot: Any, value: str) -> list[tuple[type, re.Match[str]]]:
    return [(cls, match) for pattern, cls in registered(bot).items()
            if (match := pattern.fullmatch(value))]


def sent_components(view: discord.ui.View) -> list[dict[str, Any]]:
    return [c for row in view.to_components() for c in row["components"]]


def every_sent_view() -> list[discord.ui.View]:
    """Every view the worker (result messages) or the bot (queued messages, the Parameters
    menu's answer) sends, over the jobs that change which buttons a result gets."""
    hires = {"width": 128, "height": 128, "strength": 0.5, "steps": 4}
    jobs = [make_job(count=10), make_job(count=3, upscale=True), make_job(hires=hires),
            make_job(kind="variation", source_job_id="cd", source_index=1, count=2),
            make_job(kind="upscale", source_job_id="cd", source_index=0)]
    views = [result_view(job, can_upscale=can) for job in jobs for can in (True, False)]
    views.append(queued_view(make_job().id))
    views.append(sent_view([BUTTONS[Action.DRAW].button("0123456789abcdef" * 2)]))
    return views


async def test_every_table_entry_has_exactly_one_registered_handler_with_its_template(bot):
    handlers = registered(bot)
    assert sorted(cls.action for cls in handlers.values()) == sorted(Action)
    for pattern, cls in handlers.items():
        assert pattern.pattern == BUTTONS[cls.action].template


async def test_every_button_sent_parses_back_into_the_same_button(bot):
    seen = set()
    for view in every_sent_view():
        for sent in sent_components(view):
            [(cls, match)] = handler_for(bot, sent["custom_id"])
            rebuilt = await cls.from_custom_id(None, None, match)
            assert rebuilt.item.to_component_dict() == sent
            seen.add(cls.action)
    assert seen == set(Action)


async def test_the_edit_forms_are_read_back_by_the_edit_cog(bot):
    forms = bot.get_cog("EditCog").forms
    job = make_job()
    for action in (Action.EDIT, Action.EDIT_QUEUED):
        form = EditForm(job, bot.config, action=action, title="t")
        matched = [p for p in forms if (m := p.fullmatch(form.custom_id)) and
                   m["job_id"] == job.id]
        assert len(matched) == 1


# --- hostile custom_ids -------------------------------------------------------------------------


async def posted_job(redis) -> str:
    """A job of two images, drawn and posted (by hand, no worker)."""
    keys = Keys()
    job = make_job(count=2, guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID)
    await Producer(redis, keys, result_ttl_s=600).enqueue(job)
    [delivery] = await Consumer(redis, keys, "w", lease_s=60, result_ttl_s=600).take(count=1)
    await delivery.posting()
    await delivery.posted(1)
    return job.id


UNKNOWN = "0123456789abcdef"


def ignored(posted: str) -> list[str]:
    """custom_ids no handler of ours may take: never answered, nothing runs."""
    return [
        "pony:cancel:" + "a" * 200,  # too long (Discord would not even carry it)
        f"pony:upscale:{posted}:100000000000",  # a huge index
        "pony:cancel:not-a-job", "pony:cancel:ZZZZ", "pony:delete:-1",  # not a job id
        "pony:launch:0a1b", f"pony:upscale:{posted}", f"pony:cancel:{posted}:0",  # wrong shape
        f"otherbot:cancel:{posted}", f"PONY:cancel:{posted}", f" pony:cancel:{posted}",  # not ours
        f"pony:cancel:{posted}\n",
    ]


def answered(posted: str) -> list[str]:
    """Ours by their shape, but naming nothing there is: answered privately, with why."""
    unknown = [custom_id(a, UNKNOWN, 0 if BUTTONS[a].per_image else None) for a in Action]
    return [*unknown, f"pony:upscale:{posted}:99", f"pony:vary:{posted}:99",
            f"pony:vary:{posted}:2"]


async def test_a_hostile_custom_id_matches_no_handler(bot, redis):
    posted = await posted_job(redis)
    for value in ignored(posted):
        assert handler_for(bot, value) == [], value


async def test_a_hostile_click_is_ignored_or_answered_privately_and_changes_nothing(
        fake, bot, redis, caplog):
    posted = await posted_job(redis)
    values = [*ignored(posted), *answered(posted)]
    where: dict[str, int] = {}
    for start in range(0, len(values), 25):  # Discord's 25 buttons to a message
        chunk = values[start:start + 25]
        view = sent_view([SentButton(value, str(n), None) for n, value in enumerate(chunk)])
        message = await bot.get_partial_messageable(CHANNEL_ID).send("buttons", view=view)
        where |= dict.fromkeys(chunk, message.id)

    with caplog.at_level(logging.WARNING):
        quiet = [await fake.click(where[value], value, user_id=OTHER_USER_ID)
                 for value in ignored(posted)]
        for value in answered(posted):
            itx = await fake.click(where[value], value, user_id=OTHER_USER_ID)
            await itx.wait_response(timeout=5)
            text = itx.original.content if itx.original else ""
            assert itx.ephemeral and text and text != OUR_FAULT, (value, text)

    # Each click above was answered after the ignored ones reached the bot, in order.
    assert [itx for itx in quiet if itx.callback_attempts] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    state = await QueueReads(redis, Keys()).state(posted)
    assert state is not None and state.status is JobStatus.POSTED
    snap = await QueueReads(redis, Keys()).snapshot(all_guilds=True)
    assert snap.queued == [] and snap.running == []


async def test_a_hostile_form_is_ignored_or_answered_privately(fake, bot):
    values = {"tags": "pony", "steps": "2"}
    quiet = [await fake.submit_modal(value, values, channel_id=CHANNEL_ID, user_id=USER_ID)
             for value in ("pony:edit:zz", "pony:edit:" + "a" * 200, "other:edit:0a1b")]
    for value in (custom_id(Action.EDIT, UNKNOWN), custom_id(Action.EDIT_QUEUED, UNKNOWN)):
        itx = await fake.submit_modal(value, values, channel_id=CHANNEL_ID, user_id=USER_ID)
        await itx.wait_response(timeout=5)
        assert itx.ephemeral and itx.original.content not in ("", OUR_FAULT)
    assert [itx for itx in quiet if itx.callback_attempts] == []
