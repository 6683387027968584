"""From parameters read off a picture (ponybot_core.image_parameters) to a job that draws it
again: **Draw this** under the Parameters menu's answer.

Only pictures made with one of this bot's models can be drawn again: their prompt is already in
that model's caption language, so it is drawn as written, through the channel's policy like
every job (ponybot_request.policy.apply, in build_job: outside age-restricted channels a
`suggestive` caption is drawn `safe`, with the channel's negative tags). What this bot cannot
do as written is brought within its limits and said in a note (steps or CFG out of range, a
sampler or size it does not offer); the seed is kept, so with the same model, size and sampler
it is the same picture.

The parameters wait in Redis for the button (`keys.drawable`) under `drawable_id`, a digest of
the parameters themselves: however often the menu is used on a picture (or on copies of it),
it keeps one key. Only what Draw this reads is kept, bounded (`for_draw_this`): a few KB
whatever else the picture's text carries.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ponybot_core.config import Config, ModelEntry
from ponybot_core.image_parameters import A1111Parameters
from ponybot_core.job import MAX_SEED

# What a sampler's or a model's name is kept to: longer than any real one, short in a note.
_NAME_CHARS = 100
_INT64 = 2**63 - 1


def our_model(config: Config, name: str | None) -> ModelEntry | None:
    """The configured model the parameters name (its display name, as we write it, or id)."""
    wanted = (name or "").strip().casefold()
    return next((m for m in config.models if wanted in (m.name.casefold(), m.id.casefold())),
                None) if wanted else None


def why_not_drawable(parsed: A1111Parameters, config: Config) -> str | None:
    """Why **Draw this** is not offered, in words for the user; None when it is."""
    if our_model(config, parsed.model) is None:
        return (f"made with {f'`{parsed.model}`' if parsed.model else 'an unnamed model'}, "
                "which is not one of this bot's models")
    if not parsed.prompt.strip():
        return "it has no prompt"
    limit = config.limits.max_prompt_chars
    if len(parsed.prompt) > limit or len(parsed.negative_prompt) > limit:
        return f"its prompt is longer than this bot's {limit} characters"
    return None


def for_draw_this(parsed: A1111Parameters, config: Config) -> A1111Parameters:
    """Only what Draw this reads (`why_not_drawable`, `drawing_fields`), bounded: what the menu
    keeps in Redis for the button. Everything else a picture's text says (`other`: any number
    of `Key: value` pairs) is left out, the prompts are cut at `max_prompt_chars` (longer ones
    are not drawable anyway), names at what a note can show, and numbers at 64 bits: a few KB
    at most whatever the picture carries, and the same job from it as from the whole text."""
    limit = config.limits.max_prompt_chars
    ours = our_model(config, parsed.model)
    return A1111Parameters(
        prompt=parsed.prompt[: limit + 1],  # one more: still too long, still not drawable
        negative_prompt=parsed.negative_prompt[: limit + 1],
        steps=_bounded(parsed.steps), sampler=_name(parsed.sampler), cfg=parsed.cfg,
        seed=_bounded(parsed.seed), width=_bounded(parsed.width), height=_bounded(parsed.height),
        model=ours.name if ours else _name(parsed.model),
        denoising_strength=parsed.denoising_strength,
    )  # fmt: skip


def _bounded(number: int | None) -> int | None:
    # A picture's text may give 4,000 digits; past 64 bits every check here says the same.
    return None if number is None else max(-_INT64, min(number, _INT64))


def _name(text: str | None) -> str | None:
    return None if text is None else text[:_NAME_CHARS]


def drawable_id(parsed: A1111Parameters) -> str:
    """The id the parameters are kept under: the same for the same parameters (32 hex
    digits, what a button's custom_id may carry)."""
    return hashlib.sha256(parsed.model_dump_json().encode()).hexdigest()[:32]


def drawing_fields(parsed: A1111Parameters, config: Config) -> tuple[dict[str, Any], list[str]]:
    """The Job fields (all but where the request came from; `seed` None when the picture's
    cannot be used) and the notes for the user. Call only when `why_not_drawable` is None."""
    entry = our_model(config, parsed.model)
    assert entry is not None, "why_not_drawable said it is drawable"
    limits, defaults = config.limits, config.defaults
    notes: list[str] = []

    steps = parsed.steps or entry.steps or defaults.steps
    if not limits.steps_min <= steps <= limits.steps_max:
        steps = min(max(steps, limits.steps_min), limits.steps_max)
        notes.append(f"steps {parsed.steps} → {steps}: this bot's limit")
    cfg = parsed.cfg or entry.cfg or defaults.cfg
    if not limits.cfg_min <= cfg <= limits.cfg_max:
        cfg = min(max(cfg, limits.cfg_min), limits.cfg_max)
        notes.append(f"CFG {parsed.cfg:g} → {cfg:g}: this bot's limit")
    sampler = parsed.our_sampler()
    if sampler is None:
        sampler = entry.sampler or defaults.sampler
        if parsed.sampler:
            notes.append(f"sampler `{parsed.sampler}` is not offered here: drawn with "
                         f"{sampler.value}")
    width, height = _size(parsed, config, entry, notes)
    seeded = parsed.seed is not None and 0 <= parsed.seed <= MAX_SEED
    if parsed.seed is not None and not seeded:
        notes.append(f"seed {parsed.seed} is out of range: a new one is used")
    if parsed.denoising_strength is not None:
        notes.append("the picture was drawn from another picture; this draws its prompt only")
    fields = {
        "model_id": entry.id,
        "tags": parsed.prompt,
        "prompt": parsed.prompt,
        "negative_prompt": parsed.negative_prompt,
        "seed": parsed.seed if seeded else None,
        "steps": steps,
        "cfg": cfg,
        "sampler": sampler,
        "width": width,
        "height": height,
        "count": 1,
    }
    return fields, notes


def _size(parsed: A1111Parameters, config: Config, entry: ModelEntry,
          notes: list[str]) -> tuple[int, int]:
    """The picture's size when this bot could have drawn it with the model (sides multiples of
    8, none longer and no more pixels than the model's largest size); else the model's size
    nearest its shape (`Config.model_sizes`)."""
    sizes = list(config.model_sizes(entry).values())
    longest = max(max(d.width, d.height) for d in sizes)
    most = max(d.width * d.height for d in sizes)
    w, h = parsed.width, parsed.height
    if w and h and w % 8 == 0 and h % 8 == 0 and 64 <= min(w, h) and max(w, h) <= longest \
            and w * h <= most:
        return w, h
    aspect = (w / h) if w and h else 1.0
    nearest = min(sizes, key=lambda d: abs(d.width / d.height - aspect))
    if w and h:
        notes.append(f"{w}×{h} is not a size this bot draws: drawn at "
                     f"{nearest.width}×{nearest.height}")
    return nearest.width, nearest.height
