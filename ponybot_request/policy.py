"""What a channel and a server allow, checked on the caption the model will see: for `/pony`,
and again for every button job (re-roll, U, V), whose caption was written earlier, perhaps
before the server blocked a tag or the channel's age restriction changed.

Checked on the caption, not on what was typed, because the caption is what draws: a short
form (`twilight` is V1's `twilight sparkle`), a namespace respelled (`by=x`), punctuation that
the parser did not read as a tag (`explicit.`) must not slip past. The caption is read the
way a person would read it, whatever its punctuation and separators:

- its words: letter-and-digit runs (`rating:ex_plicit` has `rating`, `ex`, `plicit`);
- its pieces squashed: each comma- or space-separated piece with only its letters and digits
  (`ex-plicit!` reads `explicit`).

Outside age-restricted channels a caption is refused if a piece contains `questionable` or
`explicit` (so `rating:explicit` and `unquestionable` too: when in doubt, refuse). A blocked
tag refuses a caption that has its words in a row, or a piece that squashes to it, in any
caption language the bot knows: each configured model's spelling of it counts
(`twilight sparkle` blocked also blocks V1's `twilight`, `artist:x` also `by=x`).

`apply` is what every job goes through (`ponybot_request.jobs.build_job`), whatever wrote its
caption: `/pony`'s own rendering, an earlier job (the buttons), a picture's parameters (Draw
this). Outside age-restricted channels it first makes the caption one such a channel draws,
read back into tags on every separator its writer could have used (`tags.caption_tags`: commas
always, spaces too for a space-separated model, so a picture's `pony,suggestive,solo` is three
tags on V2): the rating `safe`, any tag with `suggestive` or one of the model's
`sfw_negative_tags` in it as a word left out with a note (`tags.for_all_ages`), those tags
added to the negative prompt and `safe` taken out of it; then it checks the caption as above.
A caption `/pony` rendered for the channel already is left exactly as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ponybot_core.config import Config, ModelEntry
from ponybot_request.errors import UserFacingError
from ponybot_request.tags import (
    Rating,
    caption_tags,
    config_tag,
    fold,
    for_all_ages,
    rating_of,
    squash,
    write_tag,
)

REFUSED_OUTSIDE_AGE_RESTRICTED = (Rating.QUESTIONABLE, Rating.EXPLICIT)
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Allowed:
    """A caption and negative prompt as this channel draws them, and what the user should know."""

    positive: str
    negative: str
    notes: tuple[str, ...] = ()


def apply(
    caption: str,
    negative: str,
    *,
    model: ModelEntry,
    config: Config,
    age_restricted: bool,
    blocked_tags: Iterable[str] = (),
    earlier: str | None = None,
) -> Allowed:
    """The caption made what this channel draws, then checked (`check_caption`); raises
    UserFacingError when it may not be drawn here (module docstring)."""
    notes: list[str] = []
    if not age_restricted:
        profile = model.caption
        written = caption_tags(caption, profile)
        kept, notes = for_all_ages(written, profile)
        if kept != written:
            caption = profile.separator.join(kept)
        negative, negative_notes = _negative_for_all_ages(negative, model)
        notes += negative_notes
    check_caption(caption, config=config, age_restricted=age_restricted,
                  blocked_tags=blocked_tags, earlier=earlier)
    return Allowed(caption, negative, tuple(notes))


def _negative_for_all_ages(negative: str, model: ModelEntry) -> tuple[str, list[str]]:
    """The negative prompt a channel that is not age-restricted draws with: the model's
    `sfw_negative_tags` added, and the `safe` its caption is forced to taken out (pushed away
    from as hard as towards, it would cancel the rating), with what to tell the user."""
    profile = model.caption
    tags = caption_tags(negative, profile)
    forced = [t for t in tags if rating_of(t) is Rating.SAFE]
    notes = []
    if forced:
        tags = [t for t in tags if t not in forced]
        negative = profile.separator.join(tags)
        shown = ", ".join(f"`{t}`" for t in _dedupe(forced))
        notes.append(f"Left {shown} out of the negative prompt: this channel draws `safe`.")
    have = {squash(t) for t in tags}
    missing = _dedupe(w for w in (write_tag(config_tag(t), profile)
                                  for t in profile.sfw_negative_tags)
                      if squash(w) not in have)
    if missing:
        negative = profile.separator.join([*filter(None, [negative.strip()]), *missing])
    return negative, notes


def check_caption(
    caption: str,
    *,
    config: Config,
    age_restricted: bool,
    blocked_tags: Iterable[str] = (),
    earlier: str | None = None,
) -> None:
    """Raise UserFacingError (so nothing is queued) if the caption may not be drawn here.
    `earlier` names where a button's caption came from ("This picture"), None for /pony."""
    pieces = _pieces(caption)
    if not age_restricted:
        for rating in REFUSED_OUTSIDE_AGE_RESTRICTED:
            hit = next((p for p, letters in pieces if rating.value in letters), None)
            if hit is not None:
                spelled = f" (as `{hit}`)" if hit != rating.value else ""
                raise UserFacingError(
                    f"`{rating}`{spelled} needs an age-restricted channel, and this channel is "
                    "not age-restricted. "
                    + (f"{earlier} can only be re-drawn in one." if earlier else "Use `safe` here.")
                )
    words = _words(caption)
    refused = []
    for blocked in _dedupe(config_tag(t) for t in blocked_tags):
        spellings = _dedupe([blocked, *(write_tag(blocked, m.caption) for m in config.models)])
        found = next(filter(None, (_find(s, words, pieces) for s in spellings)), None)
        if found is not None:
            refused.append(f"`{found}`" + (f" (blocked: `{blocked}`)" if found != blocked else ""))
    if refused:
        raise UserFacingError(
            f"Not allowed on this server: {', '.join(refused)}. "
            + (f"{earlier} has it, so it is not re-drawn here." if earlier
               else "Remove and try again.")
        )


def _words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def _pieces(caption: str) -> list[tuple[str, str]]:
    """(piece as written, squashed) for every space- and every comma-separated piece, the
    shorter ones first so that a refusal names the least it can."""
    parts = [*re.split(r"[\s,]+", caption), *caption.split(",")]
    return [(p.strip(), squash(p)) for p in parts if squash(p)]


def _has_run(words: Sequence[str], run: Sequence[str]) -> bool:
    return any(
        list(words[i : i + len(run)]) == list(run) for i in range(len(words) - len(run) + 1)
    )


def _find(spelling: str, words: Sequence[str], pieces: Sequence[tuple[str, str]]) -> str | None:
    """How the caption spells `spelling`, if it does (module docstring)."""
    wanted = _words(spelling)
    if not wanted:
        return None
    letters = "".join(wanted)
    for piece, squashed in pieces:
        if squashed == letters or _has_run(_words(piece), wanted):
            return piece
    # Its words in a row across two tags: still what the model reads.
    return " ".join(wanted) if _has_run(words, wanted) else None


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))
