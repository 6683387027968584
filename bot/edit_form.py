"""The ✏️ Edit form: a modal prefilled with a job's tags, negative tags, seed and steps, read back
as `/pony` reads its options; the job it makes is ponybot_request.jobs.build_job's, checked
exactly as `/pony`'s caption is.

One form serves both Edit buttons (cogs/edit.py): under a result (`pony:edit:<job>`, the edited
job is queued as a new one) and on a queued message (`pony:edit-queued:<job>`, the job is
changed where it waits). The form carries its button's custom_id, and its submit
is read by that id (cogs/edit.py), never through discord.py's memory of the modal: a form
opened before a restart of the bot still works after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import discord

from bot.errors import UserFacingError
from ponybot_core.config import Config
from ponybot_core.custom_ids import Action, custom_id
from ponybot_core.job import Job
from ponybot_request.options import PonyOptions

# Discord: a text input holds at most 4000 characters; a label at most 45.
_INPUT_LIMIT = 4000
TAGS, NEGATIVE, SEED, STEPS = "tags", "negative", "seed", "steps"


class EditForm(discord.ui.Modal):
    """The form; sent, never waited on (see `open_form`)."""

    def __init__(self, job: Job, config: Config, *, action: Action, title: str) -> None:
        super().__init__(title=title, custom_id=custom_id(action, job.id), timeout=None)
        chars = min(_INPUT_LIMIT, config.limits.max_prompt_chars)
        limits = config.limits
        self.add_item(_field("Tags", TAGS, job.tags, paragraph=True, max_length=chars,
                             description="derpibooru tags, comma-separated; -tag keeps one out"))
        self.add_item(_field("Negative tags", NEGATIVE, job.negative_tags, paragraph=True,
                             max_length=chars, required=False))
        self.add_item(_field("Seed", SEED, str(job.seed), max_length=10, required=False,
                             description="empty: a new random seed"))
        self.add_item(_field("Steps", STEPS, str(job.steps), max_length=3,
                             description=f"{limits.steps_min}–{limits.steps_max}"))


def _field(label: str, name: str, value: str, *, max_length: int, paragraph: bool = False,
           required: bool = True, description: str | None = None) -> discord.ui.Label[Any]:
    style = discord.TextStyle.paragraph if paragraph else discord.TextStyle.short
    return discord.ui.Label(text=label, description=description, component=discord.ui.TextInput(
        custom_id=name, style=style, default=value[:max_length] or None, required=required,
        max_length=max_length))


async def open_form(interaction: discord.Interaction, job: Job, config: Config, *,
                    action: Action, title: str) -> None:
    """Answer the click with the form. It is stopped before it is sent, so discord.py does
    not keep it waiting for a submit that cogs/edit.py reads by its custom_id anyway."""
    form = EditForm(job, config, action=action, title=title)
    form.stop()
    await interaction.response.send_modal(form)


def submitted_values(components: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each text input's value by its custom_id, from a modal submit's components (in rows of
    type 1, or in labels of type 18)."""
    values: dict[str, str] = {}
    for component in components:
        if component.get("type") == discord.ComponentType.text_input.value:
            values[str(component.get("custom_id"))] = str(component.get("value") or "")
        inner = component.get("components") or []
        if isinstance(component.get("component"), Mapping):
            inner = [*inner, component["component"]]
        values.update(submitted_values(inner))
    return values


def read_form(config: Config, values: Mapping[str, str]) -> PonyOptions:
    """The form's values checked as /pony's options are (limits, seed range); raises
    UserFacingError naming the first bad value."""
    return PonyOptions.parse(
        config, tags=values.get(TAGS, ""), negative=values.get(NEGATIVE, "").strip(),
        seed=_whole_number(values, SEED, optional=True),
        steps=_whole_number(values, STEPS, optional=False),
    )  # fmt: skip


def _whole_number(values: Mapping[str, str], name: str, *, optional: bool) -> int | None:
    text = values.get(name, "").strip()
    if not text and optional:
        return None
    try:
        return int(text)
    except ValueError:
        raise UserFacingError(f"`{name}` must be a whole number (you gave {text!r}).") from None
