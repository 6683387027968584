"""Every button we put on a message, in one table (`BUTTONS`): its custom_id template and its look
(label, emoji, style); and which buttons a result and a queued message get.

Discord sends a clicked button's custom_id back to the bot, so the custom_id carries all a click
needs: the job id, and for U/V the image's index. The job's parameters stay in Redis (its state
hash, kept `queue.result_ttl_s` after it finished), so buttons keep working after any restart of
the bot or the workers. Both processes send buttons built from this table
(ponybot_core/messages.py turns an entry into a discord.ui.Button); the bot's handlers, one
`discord.ui.DynamicItem` per kind on the base in bot/buttons.py, take their template and look
from the same entry. Nothing here imports discord or anything heavy.

    custom_id                      button, where it is           answered in
    pony:cancel:<job id>           ✖️ Cancel, queued message      cogs/queue.py
    pony:edit-queued:<job id>      ✏️ Edit, queued message         cogs/edit.py
    pony:reroll:<job id>           🔁 Re-roll, result              cogs/results.py
    pony:upscale:<job id>:<index>  U<index+1>, result             cogs/results.py
    pony:vary:<job id>:<index>     V<index+1>, result             cogs/results.py
    pony:edit:<job id>             ✏️ Edit, result                 cogs/edit.py
    pony:hires:<job id>            ⬆️ Hires, result                cogs/results.py
    pony:delete:<job id>           🗑️ Delete, result               cogs/results.py
    pony:draw:<parameters id>      🎨 Draw this, Parameters answer cogs/parameters.py

U and V name one image (0-based index); Draw this names parameters read from a picture, kept
in Redis under keys.drawable(id), not a job. The ✏️ forms carry their button's custom_id, and
cogs/edit.py reads a submitted form by it. These custom_ids are on messages already posted:
changing one breaks every older message's button (tests/test_buttons.py holds them as they are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ponybot_core.job import Job, JobKind

PREFIX = "pony"
# Discord's limits: a custom_id is at most 100 characters; 5 buttons per row, 5 rows.
MAX_CUSTOM_ID = 100
ROW_WIDTH = 5
MAX_ROWS = 5

_JOB_ID = r"(?P<job_id>[0-9a-f]{1,32})"
_INDEX = r"(?P<index>[0-9]{1,2})"


class Action(StrEnum):
    CANCEL = "cancel"
    REROLL = "reroll"
    UPSCALE = "upscale"
    VARY = "vary"
    DELETE = "delete"
    DRAW = "draw"  # its id names parameters read from a picture, not a job
    EDIT = "edit"
    EDIT_QUEUED = "edit-queued"
    HIRES = "hires"


class Style(StrEnum):
    """discord.ButtonStyle's names, without importing discord."""

    PRIMARY = "primary"
    SECONDARY = "secondary"
    DANGER = "danger"


@dataclass(frozen=True)
class SentButton:
    """One button as it goes on a message: what discord.ui.Button needs."""

    custom_id: str
    label: str
    emoji: str | None
    style: Style = Style.SECONDARY
    row: int | None = None


@dataclass(frozen=True)
class ButtonKind:
    """One kind of button: its custom_id's shape and its look. `label` may hold `{number}`,
    the image's number (index + 1), for the buttons that name one image of a job."""

    action: Action
    label: str
    emoji: str | None = None
    style: Style = Style.SECONDARY
    per_image: bool = False

    @property
    def template(self) -> str:
        """The regex a `DynamicItem` matches this kind's custom_ids with (groups job_id,
        index)."""
        tail = f":{_INDEX}" if self.per_image else ""
        return f"{PREFIX}:{self.action.value}:{_JOB_ID}{tail}"

    def custom_id(self, key: str, index: int | None = None) -> str:
        """The custom_id naming `key` (a job id; a parameters id for Draw this) and, for U and V,
        image `index` (0-based)."""
        if (index is not None) != self.per_image:
            raise ValueError(f"{self.action.value}: an image index is "
                             f"{'required' if self.per_image else 'not used'}")
        parts = [PREFIX, self.action.value, key] + ([str(index)] if index is not None else [])
        value = ":".join(parts)
        if not re.fullmatch(self.template, value) or len(value) > MAX_CUSTOM_ID:
            raise ValueError(f"not a valid {self.action.value} custom_id: {value!r}")
        return value

    def button(self, key: str, index: int | None = None, *, row: int | None = None) -> SentButton:
        label = self.label.format(number=(index or 0) + 1) if self.per_image else self.label
        return SentButton(self.custom_id(key, index), label, self.emoji, self.style, row)


BUTTONS: dict[Action, ButtonKind] = {kind.action: kind for kind in (
    ButtonKind(Action.CANCEL, "Cancel", "✖️"),
    ButtonKind(Action.EDIT_QUEUED, "Edit", "✏️"),
    ButtonKind(Action.REROLL, "Re-roll", "🔁"),
    ButtonKind(Action.UPSCALE, "U{number}", per_image=True),
    ButtonKind(Action.VARY, "V{number}", per_image=True),
    ButtonKind(Action.EDIT, "Edit", "✏️"),
    ButtonKind(Action.HIRES, "Hires", "⬆️"),
    ButtonKind(Action.DELETE, "Delete", "🗑️", Style.DANGER),
    ButtonKind(Action.DRAW, "Draw this", "🎨", Style.PRIMARY),
)}


def custom_id(action: Action, key: str, index: int | None = None) -> str:
    """The custom_id of `action` on job `key` (and image `index`, 0-based, for U and V)."""
    return BUTTONS[action].custom_id(key, index)


def template(action: Action) -> str:
    """The regex a `DynamicItem` matches `action`'s custom_ids with (groups job_id, index)."""
    return BUTTONS[action].template


def queued_buttons(job_id: str) -> list[SentButton]:
    """The queued message's buttons: ✖️ Cancel and ✏️ Edit."""
    return [BUTTONS[Action.CANCEL].button(job_id), BUTTONS[Action.EDIT_QUEUED].button(job_id)]


def result_buttons(job: Job, *, can_upscale: bool) -> list[SentButton]:
    """The buttons under `job`'s posted result, row by row:

    - U1..Un (upscale image i) unless the images are upscaled already or no upscaler is
      configured; V1..Vn (variation of image i) unless the job is itself an upscale;
      five to a row;
    - last row: 🔁 Re-roll and ✏️ Edit (not for an upscale: it has no seed or prompt to
      change), ⬆️ Hires (for a text-to-image job not drawn in hires already) and 🗑 Delete.
    """
    rows: list[list[SentButton]] = []

    def numbered(action: Action) -> None:
        for start in range(0, job.count, ROW_WIDTH):
            row = len(rows)
            rows.append([BUTTONS[action].button(job.id, i, row=row)
                         for i in range(start, min(start + ROW_WIDTH, job.count))])

    upscaled = job.kind is JobKind.UPSCALE or job.upscale
    if can_upscale and not upscaled:
        numbered(Action.UPSCALE)
    if job.kind is not JobKind.UPSCALE:
        numbered(Action.VARY)
    last = [] if job.kind is JobKind.UPSCALE else [Action.REROLL, Action.EDIT]
    if job.kind is JobKind.GENERATE and job.hires is None:
        last.append(Action.HIRES)
    last.append(Action.DELETE)
    rows.append([BUTTONS[action].button(job.id, row=len(rows)) for action in last])
    if len(rows) > MAX_ROWS:  # count_max is at most 10: 2 + 2 + 1 rows
        raise ValueError(
            f"{job.count} images need {len(rows)} button rows; Discord allows {MAX_ROWS}"
        )
    return [button for row in rows for button in row]
