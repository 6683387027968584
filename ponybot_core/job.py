"""The job contract between the bot and the workers.

A `Job` is written by the bot and never changed once a worker has taken it (until then its user
may edit it in place: ✏️ Edit, `lua/edit.lua`); what happens to it afterwards (the message
that shows it, attempts, posted or not) lives in its state hash
(`ponybot_core.queue.state.JobState`). The schema version lets a worker refuse, rather than
misread, a job from a newer bot. The interaction token is stored apart from the job, only while
Discord accepts it.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ponybot_core.config import Sampler
from ponybot_core.hires_plan import HiresPass

# 2: the picture check (`picture_check`). A worker from before it reads version 1 only, so it
# refuses (dead-letters, telling the user) a job it would otherwise post unchecked; this one
# reads both, and a version-1 job, from a bot that predates the check, gets the strict default.
SCHEMA_VERSION: Final = 2
# Discord lets an interaction token edit its messages for 15 minutes.
INTERACTION_TOKEN_TTL_S = 15 * 60
# Edit through the token only while it has comfortably more than this left.
TOKEN_MARGIN_S = 30.0
MAX_SEED = 2**32 - 1


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


class JobKind(StrEnum):
    GENERATE = "generate"  # /pony and 🔁 Re-roll: text to image
    UPSCALE = "upscale"  # U buttons, /upscale: an earlier image or an upload through Real-ESRGAN
    VARIATION = "variation"  # V buttons, /pony image: img2img from an earlier image or an upload


class UploadedImage(BaseModel):
    """A picture a user attached to a command, as Discord described it (its URL is fetched
    by the worker with ponybot_core.downloads, which checks it all again)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    url: str
    filename: str
    content_type: str
    size: Annotated[int, Field(ge=0)]
    width: Annotated[int, Field(ge=1)]
    height: Annotated[int, Field(ge=1)]


class Flagged(StrEnum):
    """What a server has a flagged picture become (`/safety flagged`)."""

    WITHHOLD = "withhold"  # not posted; a placeholder in its place
    SPOILER = "spoiler"  # posted behind Discord's spoiler cover
    REDIRECT = "redirect"  # posted in the server's age-restricted channel instead


class PictureCheck(BaseModel):
    """Whether the worker checks this job's pictures ([safety], inference/safety) and what a
    flagged one becomes. Written by the bot from the channel and the server's `/safety`
    choice; the defaults (checked, withheld) are what a job from an older bot gets: never
    less strict than the server asked."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    check: bool = True
    flagged: Flagged = Flagged.WITHHOLD
    # REDIRECT: the server's age-restricted channel.
    redirect_channel_id: int | None = None


class Job(BaseModel):
    # New optional fields must not break older workers; breaking changes bump the version.
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    id: str = Field(default_factory=new_job_id)
    created_at: float = Field(default_factory=time.time)

    # Where the request came from and where the result goes.
    application_id: int
    interaction_id: int
    # Lets the worker edit the interaction's message without the bot; never logged, never
    # stored with the job ("" once it has expired: results go to the channel then).
    interaction_token: str = Field(default="", repr=False)
    guild_id: int | None
    channel_id: int
    user_id: int

    # What to draw: the prompts are already rendered for the model's caption style.
    model_id: str
    tags: str  # what the user typed, for display
    # What the user typed as `negative:` (the ✏️ Edit form shows it again).
    negative_tags: str = ""
    prompt: str
    negative_prompt: str
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    steps: Annotated[int, Field(ge=1)]
    cfg: Annotated[float, Field(gt=0)]
    sampler: Sampler
    width: Annotated[int, Field(ge=64, multiple_of=8)]
    height: Annotated[int, Field(ge=64, multiple_of=8)]
    count: Annotated[int, Field(ge=1)] = 1

    kind: JobKind = JobKind.GENERATE
    # The user chose the seed: run the job on its own so the same seed gives exactly the same
    # pixels (in a batch an image can differ by ±1/255 in a few pixels).
    seeded: bool = False
    # Upscale the generated images too (`/pony upscale:true`).
    upscale: bool = False
    # GENERATE: drawn at width×height, then enlarged and refined by img2img (`/pony hires:true`,
    # the ⬆️ Hires button; ponybot_core/hires_plan.py).
    hires: HiresPass | None = None
    # UPSCALE / VARIATION: which earlier job's image (0-based) to start from.
    source_job_id: str | None = None
    source_index: Annotated[int, Field(ge=0)] | None = None
    # UPSCALE / VARIATION without an earlier job: the picture the user uploaded
    # (`/upscale image:`, `/pony image:`).
    source_upload: UploadedImage | None = None
    # UPSCALE: the configured upscaler to use (`/upscale upscaler:`); None = the default.
    upscaler_id: str | None = None
    # VARIATION: img2img strength (0 = the same picture, 1 = a new one).
    strength: Annotated[float, Field(gt=0, le=1)] | None = None
    # The most bytes one file may have here, as Discord told the bot with the interaction
    # (`attachment_size_limit`: more in boosted servers). The worker fits every file under the
    # smaller of this and its `worker.attachment_limit_bytes`.
    attachment_limit: Annotated[int, Field(ge=1)] | None = None
    # The picture check: whether and how (the channel's age restriction, the server's choice).
    picture_check: PictureCheck = Field(default_factory=PictureCheck)

    @property
    def guild_key(self) -> int:
        """The queue's tenant: the server, or 0 for DMs."""
        return self.guild_id or 0

    def batch_key(self) -> str:
        """Jobs with equal keys can be sampled in one pipeline call (the model id comes first:
        the queue's take script reads it from there)."""
        if self.kind is not JobKind.GENERATE or self.seeded:
            return f"{self.model_id}|{self.kind.value}|{self.id}"  # never batched
        key = (f"{self.model_id}|{self.width}x{self.height}|{self.steps}|{self.sampler.value}"
               f"|{self.cfg:g}|{int(self.upscale)}")
        if self.hires is not None:  # a second pass: never in one call with plain jobs
            h = self.hires
            key += f"|hires:{h.width}x{h.height}:{h.strength:g}:{h.steps}"
        return key

    def image_seeds(self) -> list[int]:
        """One seed per image, so image i of a job is reproducible on its own."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    def work_units(self) -> float:
        """How many plain jobs' worth of sampling this job is, for ETAs: 1, plus for hires its
        second pass's pixels × denoising steps over the first pass's (a 2× pass at half
        strength on the same steps is 1 + 4 × 0.5 = 3)."""
        if self.hires is None:
            return 1.0
        first = self.width * self.height * self.steps
        second = self.hires.width * self.hires.height * self.hires.denoising_steps
        return 1.0 + second / first

    def token_expires_at(self) -> float:
        return self.created_at + INTERACTION_TOKEN_TTL_S

    def token_usable(self, now: float) -> bool:
        """The interaction token can still edit the job's messages (with a margin)."""
        return bool(self.interaction_token) and now < self.token_expires_at() - TOKEN_MARGIN_S

    def to_json(self) -> str:
        """The job as stored: everything but the interaction token."""
        return self.model_dump_json(exclude={"interaction_token"})

    @classmethod
    def from_json(cls, data: str | bytes) -> Job:
        return cls.model_validate_json(data)
