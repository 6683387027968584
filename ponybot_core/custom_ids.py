"""The custom_id of every button we put on a message, and which buttons a result gets.

Discord sends a clicked button's custom_id back to the bot, so the custom_id carries all a click
needs: the job id, and for U/V the image's index. The job's parameters stay in Redis (its state
hash, kept `queue.result_ttl_s` after it finished), so buttons keep working after any restart of
the bot or the workers. The worker writes these ids on the results it posts; the bot's
`discord.ui.DynamicItem` templates match them. Both build them here, and nothing here imports
discord or anything heavy.

    pony:cancel:<job id>           ✖️ Cancel (queued message)
    pony:reroll:<job id>           🔁 Re-roll: the same parameters with a new seed
    pony:upscale:<job id>:<index>  U<index+1>: upscale that image (0-based index)
    pony:vary:<job id>:<index>     V<index+1>: img2img variation of that image
    pony:delete:<job id>           🗑 Delete the result (requester, server admins, owners)
    pony:draw:<parameters id>      Draw this (the Parameters menu's answer): the parameters read
                                   from a picture, kept in Redis under keys.drawable(id)
    pony:edit:<job id>             ✏️ Edit: a form with the job's tags, negative, seed, steps;
                                   queues the edited job (the form's submit has the same id)
    pony:edit-queued:<job id>      ✏️ Edit (queued message): the same form, edits the job in
                                   place while it has not started (same id on the submit)
    pony:hires:<job id>            ⬆️ Hires: the same picture drawn again in two passes, larger
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


# Actions that name one image of the job.
_PER_IMAGE = frozenset({Action.UPSCALE, Action.VARY})


def custom_id(action: Action, job_id: str, index: int | None = None) -> str:
    """The custom_id of `action` on job `job_id` (and image `index`, 0-based, for U and V)."""
    if (index is not None) != (action in _PER_IMAGE):
        raise ValueError(
            f"{action.value}: an image index is "
            f"{'required' if action in _PER_IMAGE else 'not used'}"
        )
    parts = [PREFIX, action.value, job_id] + ([str(index)] if index is not None else [])
    value = ":".join(parts)
    if not re.fullmatch(template(action), value) or len(value) > MAX_CUSTOM_ID:
        raise ValueError(f"not a valid {action.value} custom_id: {value!r}")
    return value


def template(action: Action) -> str:
    """The regex a `DynamicItem` matches `action`'s custom_ids with (groups job_id, index)."""
    tail = f":{_INDEX}" if action in _PER_IMAGE else ""
    return f"{PREFIX}:{action.value}:{_JOB_ID}{tail}"


@dataclass(frozen=True)
class ResultButton:
    """One button under a result: what discord.ui.Button needs, without importing discord."""

    custom_id: str
    label: str
    emoji: str | None
    row: int
    danger: bool = False


def result_buttons(job: Job, *, can_upscale: bool) -> list[ResultButton]:
    """The buttons under `job`'s posted result, row by row:

    - U1..Un (upscale image i) unless the images are upscaled already or no upscaler is
      configured; V1..Vn (variation of image i) unless the job is itself an upscale;
      five to a row;
    - last row: 🔁 Re-roll and ✏️ Edit (not for an upscale: it has no seed or prompt to
      change), ⬆️ Hires (for a text-to-image job not drawn in hires already) and 🗑 Delete.
    """
    rows: list[list[ResultButton]] = []

    def numbered(action: Action, letter: str) -> None:
        for start in range(0, job.count, ROW_WIDTH):
            row = len(rows)
            rows.append(
                [
                    ResultButton(custom_id(action, job.id, i), f"{letter}{i + 1}", None, row)
                    for i in range(start, min(start + ROW_WIDTH, job.count))
                ]
            )

    upscaled = job.kind is JobKind.UPSCALE or job.upscale
    if can_upscale and not upscaled:
        numbered(Action.UPSCALE, "U")
    if job.kind is not JobKind.UPSCALE:
        numbered(Action.VARY, "V")
    last = len(rows)
    actions = (
        []
        if job.kind is JobKind.UPSCALE
        else [ResultButton(custom_id(Action.REROLL, job.id), "Re-roll", "🔁", last),
              ResultButton(custom_id(Action.EDIT, job.id), "Edit", "✏️", last)]
    )
    if job.kind is JobKind.GENERATE and job.hires is None:
        actions.append(ResultButton(custom_id(Action.HIRES, job.id), "Hires", "⬆️", last))
    actions.append(ResultButton(custom_id(Action.DELETE, job.id), "Delete", "🗑️", last, danger=True))
    rows.append(actions)
    if len(rows) > MAX_ROWS:  # count_max is at most 10: 2 + 2 + 1 rows
        raise ValueError(
            f"{job.count} images need {len(rows)} button rows; Discord allows {MAX_ROWS}"
        )
    return [button for row in rows for button in row]
