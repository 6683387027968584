"""Every job is made here: `build_job(request, channel, saved, config=...)`.

Whatever the way in — `/pony`, a result's buttons (🔁 Re-roll, U, V, ⬆️ Hires), ✏️ Edit under a
result or on a queued message, Draw this, `/upscale`, `ponybot draw` — the caller translates
it into one of the requests below and calls `build_job`, which

    1. resolves what was not said (ponybot_request.resolution: option > user > channel >
       server > model > config), for the requests that start from options;
    2. picks the seed when none is given (the one place a seed is drawn at random);
    3. writes the caption for the model (ponybot_request.prompting), or takes an earlier one
       (an earlier job's, a picture's parameters);
    4. applies the channel's policy to that caption (ponybot_request.policy.apply: outside
       age-restricted channels the rating is `safe`, explicit is refused, tags naming the
       channel's negatives are left out and the negatives added, `safe` is kept out of the
       negative prompt; a server's blocked tags are refused everywhere); a button or form
       naming an earlier job is refused outside that job's channel (`check_in_its_channel`);
    5. returns the job and what the user should be told.

Every refusal is a UserFacingError, raised before anything is queued. Nothing here reads Redis
or talks to Discord: what was saved and what the channel allows arrive as arguments
(`Channel`, `Saved`), so the same request gives the same job wherever it comes from.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, assert_never

from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from ponybot_core import hires_plan
from ponybot_core.config import Config, ModelEntry
from ponybot_core.hires_plan import HiresPass
from ponybot_core.image_parameters import A1111Parameters
from ponybot_core.job import MAX_SEED, SCHEMA_VERSION, Job, JobKind, UploadedImage, new_job_id
from ponybot_request import policy
from ponybot_request.drawable import drawing_fields, why_not_drawable
from ponybot_request.errors import UserFacingError
from ponybot_request.options import PonyOptions
from ponybot_request.prompting import render_prompt
from ponybot_request.resolution import Saved, resolve

# Where a caption came from when it was written before this request (a button, Draw this):
# how a refusal names it.
_EARLIER = "This picture"
# Options checked already, by `PonyOptions.parse` against the config (which a request does not
# carry, so its validators could not run again here).
CheckedOptions = Annotated[PonyOptions, SkipValidation]
# The smallest side a job may have (Job.width/height), and their step.
_MIN_SIDE = 64
_STEP = 8


class Requester(BaseModel):
    """Who asked, and how their answer reaches them (the interaction a worker edits)."""

    model_config = ConfigDict(frozen=True)

    user_id: int
    application_id: int = 0
    interaction_id: int = 0
    interaction_token: str = Field(default="", repr=False)
    # The most bytes one file may have where the answer goes (Discord says it per interaction).
    attachment_limit: int | None = None


class Channel(BaseModel):
    """Where the job is drawn, and what is allowed there."""

    model_config = ConfigDict(frozen=True)

    guild_id: int | None
    channel_id: int
    age_restricted: bool
    # The server's `/model block` list, canonical (bot.guild_settings).
    blocked_tags: tuple[str, ...] = ()
    # The server's `/settings server quality_prefix`: captions start with the model card's
    # quality tags (V6 XL's `score_9, score_8_up, ...`) unless it turned them off.
    quality_prefix: bool = True


class PonyRequest(BaseModel):
    """`/pony` (and `ponybot draw`): options as typed and checked (`PonyOptions.parse`)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["pony"] = "pony"
    by: Requester
    options: CheckedOptions
    upscale: bool | None = None
    # `image:` as checked from what Discord said of it (bot.uploads.checked_upload).
    image: UploadedImage | None = None
    strength: float | None = None
    hires: bool = False


class FromResult(BaseModel):
    """A button under a result: 🔁 Re-roll, U<i>, V<i>, ⬆️ Hires of the job `source`."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["reroll", "upscale", "vary", "hires"]
    by: Requester
    source: Job
    # U and V: which image of the source (0-based).
    index: int | None = None


class EditRequest(BaseModel):
    """✏️ Edit submitted: `source` again with the form's tags, negative tags, seed and steps.
    `in_place`: the form on a queued message, which changes that job where it waits (its id,
    its requester, its channel stay: the channel given must be the job's own)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["edit"] = "edit"
    by: Requester
    source: Job
    form: CheckedOptions
    in_place: bool = False


class DrawThisRequest(BaseModel):
    """Draw this: the parameters the Parameters menu read off a picture."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["draw-this"] = "draw-this"
    by: Requester
    parameters: A1111Parameters


class UpscaleRequest(BaseModel):
    """`/upscale image:`: any picture through a configured upscaler."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["upscale-upload"] = "upscale-upload"
    by: Requester
    image: UploadedImage
    upscaler_id: str | None = None


Request = Annotated[PonyRequest | FromResult | EditRequest | DrawThisRequest | UpscaleRequest,
                    Field(discriminator="kind")]


@dataclass(frozen=True)
class Built:
    """The job to queue, and the notes its queued message shows."""

    job: Job
    notes: tuple[str, ...] = ()


def build_job(request: Request, channel: Channel, saved: Saved | None, *,
              config: Config) -> Built:
    """The job `request` makes in `channel` (module docstring). `saved` is everything saved
    for this user, channel and server (`bot.saved_settings.Layers`); None: nothing saved (`ponybot
    draw`, and the requests that re-use an earlier job's parameters). Raises UserFacingError."""
    match request:
        case PonyRequest():
            return _pony(request, channel, saved, config)
        case FromResult():
            return _from_result(request, channel, config)
        case EditRequest():
            return _edit(request, channel, config)
        case DrawThisRequest():
            return _draw_this(request, channel, config)
        case UpscaleRequest():
            return _upscale(request, channel, saved, config)
        case _:
            assert_never(request)


# --- one builder per request ------------------------------------------------------------------


def _pony(request: PonyRequest, channel: Channel, saved: Saved | None, config: Config) -> Built:
    resolved = resolve(request.options, config, saved, upscale=request.upscale)
    options, entry, generation = resolved.options, resolved.model, resolved.generation
    rendered, notes = render_prompt(options, entry, config, age_restricted=channel.age_restricted,
                                    blocked_tags=channel.blocked_tags,
                                    quality_prefix=channel.quality_prefix)
    if resolved.upscale and not config.upscalers:
        raise UserFacingError("Upscaling is not available: no upscaler is configured on "
                              "this bot. Ask again with `upscale:false` (it may come from "
                              "your `/settings` or the channel's).")
    seed, seeded = _seed(generation.seed)
    fields: dict[str, Any] = {
        "model_id": entry.id, "tags": options.tags.strip(), "negative_tags": options.negative,
        "prompt": rendered.positive, "negative_prompt": rendered.negative,
        "seed": seed, "seeded": seeded, "steps": generation.steps, "cfg": generation.cfg,
        "sampler": generation.sampler, "width": generation.width, "height": generation.height,
        "count": generation.count, "upscale": resolved.upscale,
    }
    fields.update(_img2img(request, config, entry))
    if request.hires:  # planned from the size the job has now: the first pass's
        if fields.get("kind", JobKind.GENERATE) is not JobKind.GENERATE:
            raise UserFacingError("`hires` draws from tags: ask for it without `image`.")
        fields["hires"] = hires_pass(config, fields["width"], fields["height"],
                                     fields["steps"], entry)
    return Built(_new_job(fields, request.by, channel), (*resolved.notes(), *notes))


def _from_result(request: FromResult, channel: Channel, config: Config) -> Built:
    source, kind = request.source, request.kind
    check_in_its_channel(source, channel.guild_id, channel.channel_id)
    changes: dict[str, Any]
    if kind == "reroll":
        if source.kind is JobKind.UPSCALE:
            raise UserFacingError("An upscale has nothing to re-roll: the same image gives the "
                                  "same upscale. Re-roll the original picture instead.")
        changes, note = _new_seed(), f"re-roll of job {source.id}"
    elif kind == "hires":
        if source.kind is not JobKind.GENERATE:
            raise UserFacingError("Hires draws a picture again from its tags; use it on a "
                                  "picture drawn from tags.")
        if source.hires is not None:
            raise UserFacingError("This picture is drawn in hires already.")
        changes = {"seeded": True,
                   "hires": hires_pass(config, source.width, source.height, source.steps,
                                       _model(config, source.model_id))}
        note = f"hires of job {source.id}"
    else:
        index = request.index if request.index is not None else 0
        if not 0 <= index < source.count:
            raise UserFacingError(f"Job `{source.id}` has no image {index + 1}.")
        # From the posted picture (the worker fetches it), not the one it was drawn from.
        changes = {"count": 1, "source_job_id": source.id, "source_index": index,
                   "source_upload": None}
        note = ""
        if kind == "upscale":
            if not config.upscalers:
                raise UserFacingError("Upscaling is not available: no upscaler is configured "
                                      "on this bot.")
            if source.kind is JobKind.UPSCALE or source.upscale:
                raise UserFacingError("This picture is upscaled already.")
            changes |= {"kind": JobKind.UPSCALE, "upscale": False, "strength": None,
                        "seed": source.image_seeds()[index]}
        else:  # vary: upscaled like its source was (`/pony upscale:true`)
            changes |= {"kind": JobKind.VARIATION, **_new_seed(),
                        "upscale": source.upscale and bool(config.upscalers),
                        "strength": config.variation_strength}
    # The caption was written earlier, maybe before the server blocked a tag or the channel's
    # age restriction changed: the channel's policy again, as for /pony.
    allowed = policy.apply(source.prompt, source.negative_prompt,
                           model=_model(config, source.model_id), config=config,
                           age_restricted=channel.age_restricted,
                           blocked_tags=channel.blocked_tags, earlier=_EARLIER)
    changes |= {"prompt": allowed.positive, "negative_prompt": allowed.negative}
    job = _new_job({**source.model_dump(), **changes}, request.by, channel)
    return Built(job, (*filter(None, [note]), *allowed.notes))


def _edit(request: EditRequest, channel: Channel, config: Config) -> Built:
    source, form = request.source, request.form
    check_editable(source)
    if not request.in_place:  # in place, it stays in its channel (checked below)
        check_in_its_channel(source, channel.guild_id, channel.channel_id)
    if request.in_place and (channel.guild_id, channel.channel_id) != (source.guild_id,
                                                                       source.channel_id):
        # The job stays in its channel: what any other channel allows says nothing about it.
        raise ValueError("a queued job's edit is checked against the job's own channel")
    entry = _model(config, source.model_id)
    rendered, notes = render_prompt(form, entry, config, age_restricted=channel.age_restricted,
                                    blocked_tags=channel.blocked_tags,
                                    quality_prefix=channel.quality_prefix)
    steps = form.steps or source.steps
    seed, seeded = _seed(form.seed)
    changes: dict[str, Any] = {
        "tags": form.tags.strip(), "negative_tags": form.negative,
        "prompt": rendered.positive, "negative_prompt": rendered.negative,
        "seed": seed, "seeded": seeded, "steps": steps,
    }
    if source.hires is not None:
        changes["hires"] = hires_pass(config, source.width, source.height, steps, entry)
    if request.in_place:  # the same job, where it waits
        # Stamped with this bot's schema: an older worker refuses it rather than misreads it.
        return Built(Job.model_validate({**source.model_dump(), **changes,
                                         "schema_version": SCHEMA_VERSION}), notes)
    job = _new_job({**source.model_dump(), **changes}, request.by, channel)
    return Built(job, (f"edit of job {source.id}", *notes))


def _draw_this(request: DrawThisRequest, channel: Channel, config: Config) -> Built:
    parsed = request.parameters
    problem = why_not_drawable(parsed, config)  # the config may have changed since the menu
    if problem:
        raise UserFacingError(f"This picture cannot be drawn here: {problem}.")
    fields, notes = drawing_fields(parsed, config)
    allowed = policy.apply(parsed.prompt, parsed.negative_prompt,
                           model=_model(config, fields["model_id"]), config=config,
                           age_restricted=channel.age_restricted,
                           blocked_tags=channel.blocked_tags, earlier=_EARLIER)
    seed, seeded = _seed(fields["seed"])
    fields |= {"prompt": allowed.positive, "negative_prompt": allowed.negative, "seed": seed,
               "seeded": seeded}
    return Built(_new_job(fields, request.by, channel),
                 ("drawn from a picture's parameters", *notes, *allowed.notes))


def _upscale(request: UpscaleRequest, channel: Channel, saved: Saved | None,
             config: Config) -> Built:
    ids = [u.id for u in config.upscalers]
    if not ids:
        raise UserFacingError("Upscaling is not available: no upscaler is configured on this bot.")
    if request.upscaler_id is not None and request.upscaler_id not in ids:
        raise UserFacingError(f"Unknown upscaler {request.upscaler_id!r}; choose one of "
                              f"{', '.join(ids)}.")
    # An upscale draws nothing and has no caption to check: the model and sampling fields only
    # give the job its shape (the server's model, so the queue's checks pass as for a U button).
    server_model = saved.server.configured_model(config) if saved is not None else None
    model = config.model(server_model or config.default_model)
    image = request.image
    fields = {
        "kind": JobKind.UPSCALE, "model_id": model.id, "tags": image.filename, "prompt": "",
        "negative_prompt": "", "seed": 0, "steps": config.defaults.steps,
        "cfg": config.defaults.cfg, "sampler": config.defaults.sampler,
        "width": _job_side(image.width), "height": _job_side(image.height),
        "source_upload": image, "upscaler_id": request.upscaler_id,
    }
    return Built(_new_job(fields, request.by, channel))


def check_editable(source: Job) -> None:
    """✏️ Edit re-draws a job from its tags: refused for an upscale, which has none."""
    if source.kind is JobKind.UPSCALE:
        raise UserFacingError("An upscale has no tags to edit: edit the original picture.")


def check_in_its_channel(source: Job, guild_id: int | None, channel_id: int) -> None:
    """A result's buttons and ✏️ form work in the channel the job was drawn in, nowhere else.
    Discord delivers a click only for a button on the message clicked, but a forged one could
    name any job by its id: it would show another server's tags (✏️), or re-post a picture
    from an age-restricted channel into one that is not (U, V)."""
    if (source.guild_id, source.channel_id) != (guild_id, channel_id):
        raise UserFacingError("This button belongs to a message in another channel: use the "
                              "buttons under the picture itself.")


# --- the parts they share ---------------------------------------------------------------------


def _new_job(fields: Mapping[str, Any], by: Requester, channel: Channel) -> Job:
    """A new job: `fields`, asked for by `by`, drawn and answered in `channel`."""
    return Job.model_validate({
        **fields, **by.model_dump(), "guild_id": channel.guild_id,
        "channel_id": channel.channel_id, "id": new_job_id(), "created_at": time.time(),
        "schema_version": SCHEMA_VERSION,
    })  # fmt: skip


def _seed(given: int | None) -> tuple[int, bool]:
    """The seed to draw with, and whether someone chose it (then the job runs on its own, so
    the same seed gives exactly the same pixels)."""
    if given is not None:
        return given, True
    return secrets.randbelow(MAX_SEED), False


def _new_seed() -> dict[str, Any]:
    seed, seeded = _seed(None)
    return {"seed": seed, "seeded": seeded}


def _model(config: Config, model_id: str) -> ModelEntry:
    try:
        return config.model(model_id)
    except KeyError:
        raise UserFacingError(f"The model `{model_id}` is no longer available on this bot; "
                              "use /pony to pick another.") from None


def hires_pass(config: Config, width: int, height: int, steps: int,
               entry: ModelEntry | None = None) -> HiresPass:
    """The hires pass for a first pass of `width`×`height` px and `steps` steps (`/pony
    hires:true`, ⬆️ Hires, an edited hires job), planned from `[hires]` in config.toml with
    the model's own largest side (`Config.model_hires`: SDXL's 1024 px doubles to 2048);
    refused when the size cannot grow."""
    hires = config.hires if entry is None else config.model_hires(entry)
    try:
        return hires_plan.plan(hires, width, height, steps)
    except hires_plan.HiresTooLarge as exc:
        raise UserFacingError(f"Hires is not available here: {exc}.") from None


def _img2img(request: PonyRequest, config: Config, entry: ModelEntry) -> dict[str, Any]:
    """The fields `/pony image:` and `strength:` add (none: text to image), at the picture's
    own aspect: img2img, as the V buttons do from an earlier picture."""
    if request.image is None:
        if request.strength is not None:
            raise UserFacingError("`strength` is how far to move away from a picture: give one "
                                  "with `image`, or ask again without `strength`.")
        return {}
    if request.options.size is not None:
        raise UserFacingError("With `image`, the picture's own shape sets the size: ask again "
                              "without `size`.")
    width, height = model_size(request.image.width, request.image.height, config, entry)
    strength = request.strength if request.strength is not None else config.variation_strength
    return {"kind": JobKind.VARIATION, "source_upload": request.image, "strength": strength,
            "width": width, "height": height}


def model_size(width: int, height: int, config: Config,
               entry: ModelEntry | None = None) -> tuple[int, int]:
    """The size to draw an uploaded picture at: its aspect, about as many pixels as the
    default size has (what the model draws best), no side longer than the longest of the
    model's sizes (`Config.model_sizes`; no model: `[sizes]`) or shorter than 64, sides
    multiples of 8."""
    sizes = config.sizes if entry is None else config.model_sizes(entry)
    native = sizes[config.defaults.size]
    longest = max(max(d.width, d.height) for d in sizes.values())
    scale = min(math.sqrt(native.width * native.height / (width * height)),
                longest / max(width, height))
    # A short side under 64 would be stretched to 64: enlarge the whole picture instead (only
    # a picture more than longest/64 times wider than high is stretched at all).
    scale = max(scale, _MIN_SIDE / min(width, height))

    def side(length: int) -> int:
        return max(_MIN_SIDE, round(length * scale / _STEP) * _STEP)

    return min(side(width), longest), min(side(height), longest)


def _job_side(pixels: int) -> int:
    # A job's width and height are multiples of 8, at least 64: the picture's, rounded up.
    return max(_MIN_SIDE, math.ceil(pixels / _STEP) * _STEP)
