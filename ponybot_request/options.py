"""`/pony`'s options as a pydantic model, checked against the configured limits.

Discord's own min/max hints cannot come from config at decoration time, and clients can send
anything, so these checks are the truth; each failure names the option and the allowed range.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ponybot_core.config import Config, Limits, Sampler, Size
from ponybot_core.job import MAX_SEED
from ponybot_request.errors import UserFacingError


class PonyOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tags: str
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    count: int | None = None
    size: str | None = None
    model: str | None = None

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEED:
            raise ValueError(f"`seed` must be between 0 and {MAX_SEED} (you gave {value}).")
        return value

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> PonyOptions:
        problem = out_of_limits(_config(info).limits, steps=self.steps, cfg=self.cfg,
                                count=self.count)
        if problem:
            raise ValueError(problem)
        return self

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        allowed = [s.value for s in Size]
        if value is not None and value not in allowed:
            raise ValueError(f"`size` must be one of {', '.join(allowed)} (you gave {value!r}).")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None, info: ValidationInfo) -> str | None:
        ids = [m.id for m in _config(info).models]
        if value is not None and value not in ids:
            raise ValueError(f"Unknown model {value!r}; choose one of {', '.join(ids)}.")
        return value

    @classmethod
    def parse(cls, config: Config, **raw: object) -> PonyOptions:
        """Validate raw command options; raises UserFacingError naming the first problem."""
        given = {k: v for k, v in raw.items() if v is not None}
        try:
            return cls.model_validate(given, context={"config": config})
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first.get("ctx", {}).get("error") or first["msg"])
            raise UserFacingError(message.removeprefix("Value error, ")) from exc


def out_of_limits(limits: Limits, *, steps: int | None, cfg: float | None, count: int | None,
                  given: str = "you gave") -> str | None:
    """The first of steps, cfg and count outside the configured limits, said for the user;
    None when all are within (or not given). The one range check for /pony and buttons."""
    if steps is not None and not limits.steps_min <= steps <= limits.steps_max:
        return (f"`steps` must be between {limits.steps_min} and {limits.steps_max} "
                f"({given} {steps}).")
    if cfg is not None and not limits.cfg_min <= cfg <= limits.cfg_max:
        return f"`cfg` must be between {limits.cfg_min:g} and {limits.cfg_max:g} ({given} {cfg:g})."
    if count is not None and not 1 <= count <= limits.count_max:
        return f"`count` must be between 1 and {limits.count_max} ({given} {count})."
    return None


class Generation(BaseModel):
    """The sampling parameters once every layer of defaults is applied
    (`ponybot_request.resolution`)."""

    model_config = ConfigDict(frozen=True)

    seed: int | None
    steps: int
    cfg: float
    sampler: Sampler
    count: int
    width: int
    height: int


def _config(info: ValidationInfo) -> Config:
    assert info.context is not None, "PonyOptions.parse passes the config"
    config: Config = info.context["config"]
    return config

