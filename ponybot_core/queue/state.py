"""A job's life as one typed state machine, and the typed view of its Redis hash.

    queued ──► running ──► posting ──► posted
      │  ▲        │ │         │
      │  └────────┘ │         └──────► dead
      ▼             ├────────────────► cancelled
   cancelled        └────────────────► dead

`LEGAL` is the only place the moves are written; the Lua scripts get their part of it as an
argument and apply each move as a compare-and-set, so a job never moves backwards: `posting`
("maybe posted": the result may have reached Discord) and `posted` are never downgraded, and a
running job goes back to `queued` only when its worker gives it back (a retry, or a reclaim
while its server is paused). Nothing outside `ponybot_core.queue` reads a job hash: it reads a
`JobState` (or a `Shown`, its few fields that decide a position edit).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from ponybot_core.config import CANCELLED_TTL_S, DEAD_TTL_S
from ponybot_core.job import Job


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    POSTING = "posting"
    POSTED = "posted"
    CANCELLED = "cancelled"
    DEAD = "dead"


LEGAL: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    # running -> running: another worker took it over (its worker died); -> queued: given back.
    JobStatus.RUNNING: frozenset({JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.POSTING,
                                  JobStatus.CANCELLED, JobStatus.DEAD}),
    # posting -> posting: taken over, to be finished without drawing again if it was posted;
    # -> dead: Discord refused the post for good, so it is not posted.
    JobStatus.POSTING: frozenset({JobStatus.POSTING, JobStatus.POSTED, JobStatus.DEAD}),
    JobStatus.POSTED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.DEAD: frozenset(),
}
FINAL = frozenset(s for s, moves in LEGAL.items() if not moves)
# The one status in which a job's parameters may still change (✏️ Edit on a queued message,
# lua/edit.lua): not a move, the status stays; once taken, a worker draws what it read.
EDITABLE = JobStatus.QUEUED


@dataclass(frozen=True)
class Lifetimes:
    """How long a finished job's keys (its hash and its token key) stay in Redis, by how it
    ended. A posted job's result buttons read its hash for days; a job that ended without a
    result only answers "already cancelled" a while; a dead one waits a few days for the admin.
    A job that has not ended has no TTL: it is live state, and every end sets one."""

    posted_s: int
    cancelled_s: int = CANCELLED_TTL_S
    dead_s: int = DEAD_TTL_S

    def of(self, status: JobStatus) -> int:
        """The lifetime of a job that ended in `status` (one of FINAL)."""
        return {JobStatus.POSTED: self.posted_s, JobStatus.CANCELLED: self.cancelled_s,
                JobStatus.DEAD: self.dead_s}[status]


def sources(target: JobStatus) -> str:
    """The statuses a job may move to `target` from, as the scripts take them."""
    return ",".join(sorted(s.value for s, moves in LEGAL.items() if target in moves))


def kept_on_takeover() -> str:
    """The statuses a job keeps when another worker takes it over."""
    return ",".join(sorted(s.value for s, moves in LEGAL.items() if s in moves))


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def _optional_int(value: object) -> object:
    value = _text(value)
    return None if value in ("", None) else value


Text = Annotated[str, BeforeValidator(_text)]
OptionalInt = Annotated[int | None, BeforeValidator(_optional_int)]
OptionalFloat = Annotated[float | None, BeforeValidator(_optional_int)]


class JobState(BaseModel):
    """What Redis knows about one job (ponybot_core/queue/lua/*.lua say who writes each
    field)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: Text
    job_json: Text
    status: Annotated[JobStatus, BeforeValidator(_text)]
    attempts: Annotated[int, BeforeValidator(_text)] = 0
    guild: Annotated[int, BeforeValidator(_text)] = 0
    user: Annotated[int, BeforeValidator(_text)] = 0
    model: Text = ""
    worker: Text = ""
    message_id: OptionalInt = None
    result_message_id: OptionalInt = None
    shown_position: OptionalInt = None
    shown_at: OptionalFloat = None
    enqueued_at: OptionalFloat = None
    started_at: OptionalFloat = None
    posted_at: OptionalFloat = None
    cancel_requested: bool = False
    error: Text = ""
    # The interaction token while Discord still accepts it (kept under its own key).
    token: Text = ""
    # What the picture check found (inference/safety): which pictures were flagged and why,
    # written with the move to `posting`, before anything reaches Discord.
    picture_check: Text = ""
    # Seconds the worker spent per step ("sample", "post", ...), once posted.
    timings: dict[str, float] = {}

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes] | dict[str, str],
                  token: bytes | str | None = None) -> JobState | None:
        """None for a hash that is gone or was never a whole job."""
        fields: dict[str, object] = {str(_text(k)): v for k, v in raw.items()}
        fields["token"] = token or ""
        if "job" not in fields or "status" not in fields:
            return None
        fields["job_json"] = fields.pop("job")
        fields["cancel_requested"] = bool(fields.pop("cancel", b""))
        fields["timings"] = {name.removesuffix("_s"): float(str(_text(value)))
                             for name, value in fields.items() if name.endswith("_s")}
        try:
            return cls.model_validate(fields)
        except ValidationError:
            return None

    def job(self) -> Job:
        """The job's parameters, with its interaction token while that is alive."""
        return Job.from_json(self.job_json).model_copy(update={"interaction_token": self.token})

    @property
    def finished(self) -> bool:
        return self.status in FINAL


# The fields `Shown` reads, in the order `QueueReads.shown` asks HMGET for them.
SHOWN_FIELDS = ("status", "message_id", "shown_position", "shown_at")


@dataclass(frozen=True)
class Shown:
    """The few fields of a job hash that tell whether its queued message needs an edit: what
    the positions loop reads of every queued job, where a whole `JobState` (the job's JSON
    parsed and validated) would cost it a thousand times over."""

    status: JobStatus
    message_id: int | None
    shown_position: int | None
    shown_at: float | None
    # Its interaction token is still kept: without it no message of the job can be edited.
    token_kept: bool = False

    @classmethod
    def from_fields(cls, values: list[bytes | str | None], has_job: bool, *,
                    token_kept: bool = False) -> Shown | None:
        """`values` as HMGET gives `SHOWN_FIELDS`; None, as `JobState.from_hash` gives, for a
        hash that is gone or was never a whole job."""
        status, message_id, position, at = (None if v is None else str(_text(v))
                                             for v in values)
        if not has_job or status is None:
            return None
        try:
            return cls(JobStatus(status), int(message_id) if message_id else None,
                       int(position) if position else None, float(at) if at else None,
                       token_kept)
        except ValueError:
            return None

    @property
    def finished(self) -> bool:
        return self.status in FINAL
