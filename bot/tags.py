"""The tag language of `/pony tags:...`: parse what users type, police it, render it per model.

Users type derpibooru tags; every model was trained on captions written a little differently
(see `core.config.TagStyle`). So there are two steps with a canonical form in between:

    parse_tags(text)  ->  TagPrompt (canonical, model-independent)  ->  render(prompt, model)

Canonical form: NFKC-normalised and casefolded, `_` read as a space, single spaces, no commas,
no control characters or Discord junk. Namespaced tags are kept apart as (namespace, value).
Everything model-specific (aliases, `artist` -> `by`, the `=` separator, quality tags) comes
from `ModelEntry`; nothing about a particular model is written here.

Decisions (tests/test_tags.py spells each one out):
- Separators. Commas separate tags. With no comma at all, the text is read as V2 caption style
  (whitespace-separated) when a word has an `_`, is an `ns=value`, or is a score tag (`scr100`),
  which comma-style typing never has between commas; otherwise it is one tag
  (`twilight sparkle`). The guess cannot see that `pony solo` is two V2 tags, so code that
  re-reads text whose style it knows (a rendered prompt) passes `style=`.
- Ratings: at most one; when several are given the most explicit wins, so the channel policy
  judges the riskiest thing the user asked for (a note says so).
- A tag that is both positive and negative is kept as a negative only, with a note.
- `by=x` is read as `artist:x` (V2 captions' spelling, which users copy from shared prompts).
- Render order: rating, the model's missing quality tags, the user's tags in order, artists,
  other namespaced tags. Captions were shuffled in training so order carries no meaning there,
  but CLIP only reads the first 75 tokens: the short tags that steer the whole picture (and the
  `safe` that policy relies on) must not be the ones cut off.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from core.config import Limits, ModelEntry, TagStyle

# Discord caps an option at 6000 characters; anything longer is not a real prompt.
MAX_INPUT_CHARS = 10_000
# Score buckets of the training captions (`scrN`), shared by all these fine-tunes.
SCORE_BUCKETS = (3200, 1600, 800, 600, 400, 300, 200, 150, 100, 50, 25, 5)
EXAMPLE = "`twilight sparkle, unicorn, solo`"
_T = TypeVar("_T")


class Rating(StrEnum):
    # Declared from least to most explicit: the order is used to pick among several.
    SAFE = "safe"
    SUGGESTIVE = "suggestive"
    QUESTIONABLE = "questionable"
    EXPLICIT = "explicit"


_RATINGS = {r.value: r for r in Rating}
_KNOWN_SCORES = {f"scr{n}" for n in SCORE_BUCKETS}
_UNSAFE = (Rating.QUESTIONABLE, Rating.EXPLICIT)
# Input spelling -> canonical namespace. Output spelling is per model (namespace_rewrites).
_NAMESPACE_SYNONYMS = {"by": "artist"}


class TagError(ValueError):
    """The tags cannot be used; str() is a sentence to show the user as is."""


class TagPrompt(BaseModel):
    """What the user asked for, in canonical form. Build it with `parse_tags`."""

    model_config = ConfigDict(frozen=True)

    tags: tuple[str, ...] = ()
    artists: tuple[str, ...] = ()
    namespaced: tuple[tuple[str, str], ...] = ()
    negatives: tuple[str, ...] = ()
    rating: Rating | None = None
    notes: tuple[str, ...] = ()

    @property
    def has_positive(self) -> bool:
        return bool(self.tags or self.artists or self.namespaced)

    @property
    def is_empty(self) -> bool:
        return not (self.has_positive or self.negatives or self.rating)


class RenderedPrompt(BaseModel):
    model_config = ConfigDict(frozen=True)

    positive: str
    negative: str
    tag_count: int


# --- cleaning -------------------------------------------------------------------------------

# Mentions, channels, roles, custom emoji, timestamps, slash-command links, pings, URLs. No
# pattern contains a space and matches become a space, so one pass leaves none behind.
_DISCORD_JUNK = re.compile(
    r"<(?:@[!&]?\d+|#\d+|a?:\w+:\d+|t:-?\d+(?::[a-z])?|/[\w-]+:\d+)>"
    r"|@(?:everyone|here)\b|https?://\S+"
)
# Markdown that Discord would act on; derpibooru tags never contain these.
_MARKDOWN = re.compile(r"[`*~|\\]")
_NAMESPACED = re.compile(r"([^\W\d_][\w -]{0,31}?) ?[:=] ?(\S.*)")
_SCORE = re.compile(r"scr[0-9]+")
_SPACE_STYLE_HINT = re.compile(r"(?:^|\s)(?:\S*_\S*|[^\W\d_][\w-]*=\S+|scr[0-9]+)(?=\s|$)")


def _fold(text: str) -> str:
    # Casefolding can un-normalise, normalising can un-fold: repeat until both hold.
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", text.casefold())
        if folded == text:
            break
        text = folded
    return text


def _clean(text: str, notes: list[str]) -> str:
    text = re.sub(r"\s", " ", text)
    # Control/format characters first: deleting them must not leave un-normalised text behind.
    kept = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co"))
    if len(kept) != len(text):
        notes.append("Removed invisible control characters.")
    text = _fold(kept)
    # Replaced by a space, not deleted, so no new junk or combining sequence can form.
    text, markdown = _MARKDOWN.subn(" ", text)
    text, junk = _DISCORD_JUNK.subn(" ", text)
    if markdown or junk:
        notes.append("Removed Discord mentions, links and formatting characters.")
    return text


def _canon(item: str) -> str:
    """One cleaned item -> canonical tag text (no sign, `_` as space, single spaces)."""
    return " ".join(item.replace("_", " ").split()).lstrip("- ")


def _split_ns(tag: str) -> tuple[str, str] | None:
    match = _NAMESPACED.fullmatch(tag)
    if not match:
        return None
    namespace = match.group(1).strip()
    return _NAMESPACE_SYNONYMS.get(namespace, namespace), match.group(2)


def _is_score(tag: str) -> bool:
    return _SCORE.fullmatch(tag) is not None


def _split(text: str, style: TagStyle | None) -> list[str]:
    if style is TagStyle.SPACE or (
        style is None and "," not in text and _SPACE_STYLE_HINT.search(text)
    ):
        return text.replace(",", " ").split()
    return text.split(",")


def _word(text: str) -> str:
    """Text from config.toml, canonical like a typed tag."""
    return _canon(_clean(text, []))


def _config_tag(text: str) -> str:
    """A tag written in config.toml, in canonical form (namespaced as `ns:value`)."""
    tag = _word(text)
    ns = _split_ns(tag)
    return f"{ns[0]}:{ns[1]}" if ns else tag


# --- parsing --------------------------------------------------------------------------------


def parse_tags(text: str, negative: str = "", *, style: TagStyle | None = None) -> TagPrompt:
    """Read what the user typed. Never raises: what cannot be used is dropped with a note.

    `style` forces the separator (SPACE: whitespace, COMMA: commas) for text whose caption
    style is known, e.g. a prompt rendered for a model; None guesses (module docstring).
    """
    notes: list[str] = []
    items: list[tuple[str, bool]] = []  # (canonical item, is negative)
    for source, is_negative in ((text, False), (negative, True)):
        if not isinstance(source, str):
            continue
        if len(source) > MAX_INPUT_CHARS:
            notes.append(f"Only the first {MAX_INPUT_CHARS} characters were read.")
            source = source[:MAX_INPUT_CHARS]
        for raw in _split(_clean(source, notes), style):
            item = raw.strip()
            negated = is_negative or item.startswith("-")
            item = _canon(item)
            if item:
                items.append((item, negated))

    tags: list[str] = []
    artists: list[str] = []
    namespaced: list[tuple[str, str]] = []
    negatives: list[str] = []
    ratings: list[Rating] = []
    ignored: list[str] = []
    for item, negated in items:
        if not any(unicodedata.category(c)[0] in "LN" for c in item):
            ignored.append(item)  # `...`, `>`, lone emoji: nothing a tagger would write
            continue
        ns = _split_ns(item)
        if negated:
            negatives.append(f"{ns[0]}:{ns[1]}" if ns else item)
        elif item in _RATINGS:
            ratings.append(_RATINGS[item])
        elif ns and ns[0] == "artist":
            artists.append(ns[1])
        elif ns:
            namespaced.append(ns)
        else:
            if _is_score(item) and item not in _KNOWN_SCORES:
                notes.append(f"`{item}` is not a score bucket the models know (scr100, scr800…).")
            tags.append(item)
    if ignored:
        shown = ", ".join(f"`{i}`" for i in _dedupe(ignored)[:5])
        notes.append(f"Ignored {shown}: not tags.")

    negatives = _dedupe(negatives)
    banned = set(negatives)
    rating = max(ratings, key=list(Rating).index) if ratings else None
    if len(set(ratings)) > 1:
        given = ", ".join(r.value for r in _dedupe(ratings))
        notes.append(f"Several ratings given ({given}); using `{rating}`, the most explicit.")
    conflicts = [t for t in tags if t in banned]
    conflicts += [f"artist:{a}" for a in artists if f"artist:{a}" in banned]
    conflicts += [f"{n}:{v}" for n, v in namespaced if f"{n}:{v}" in banned]
    if rating is not None and rating.value in banned:
        conflicts.append(rating.value)
        rating = None
    for tag in _dedupe(conflicts):
        notes.append(f"`{tag}` is both wanted and negative; kept it as a negative only.")
    return TagPrompt(
        tags=tuple(t for t in _dedupe(tags) if t not in banned),
        artists=tuple(a for a in _dedupe(artists) if f"artist:{a}" not in banned),
        namespaced=tuple(p for p in _dedupe(namespaced) if f"{p[0]}:{p[1]}" not in banned),
        negatives=tuple(negatives),
        rating=rating,
        notes=tuple(_dedupe(notes)),
    )


def _dedupe(values: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(values))


# --- checks ---------------------------------------------------------------------------------


def _canonical_text(prompt: TagPrompt) -> str:
    rating = [prompt.rating.value] if prompt.rating else []
    artists = [f"artist:{a}" for a in prompt.artists]
    others = [f"{n}:{v}" for n, v in prompt.namespaced]
    return ", ".join([*rating, *prompt.tags, *artists, *others])


def validate(prompt: TagPrompt, limits: Limits) -> None:
    """Refuse prompts the bot should not queue. Lengths are measured on the canonical
    comma-separated text: rendering only shortens it (aliases, one-character separators)
    or adds the model's few quality tags."""
    if not prompt.has_positive:
        if prompt.negatives:
            raise TagError(
                "You only gave negative tags; add at least one tag to draw, e.g. " + EXAMPLE
            )
        raise TagError("Give at least one tag, e.g. " + EXAMPLE)
    for kind, count in (
        ("tags", len(prompt.tags) + len(prompt.artists) + len(prompt.namespaced)),
        ("negative tags", len(prompt.negatives)),
    ):
        if count > limits.max_tags:
            raise TagError(f"You gave {count} {kind}; at most {limits.max_tags} are allowed.")
    for kind, text in (
        ("tags", _canonical_text(prompt)),
        ("negative tags", ", ".join(prompt.negatives)),
    ):
        if len(text) > limits.max_prompt_chars:
            raise TagError(
                f"Your {kind} are {len(text)} characters long; "
                f"at most {limits.max_prompt_chars} are allowed."
            )


def apply_channel_policy(
    prompt: TagPrompt, *, age_restricted: bool, blocked_tags: Iterable[str] = ()
) -> TagPrompt:
    """Enforce what the channel allows: blocked tags anywhere, and `safe` outside
    age-restricted channels. Raises TagError; otherwise returns the prompt to render."""
    blocked = {_config_tag(t) for t in blocked_tags}
    wanted = [
        *([prompt.rating.value] if prompt.rating else []),
        *prompt.tags,
        *(f"artist:{a}" for a in prompt.artists),
        *(f"{n}:{v}" for n, v in prompt.namespaced),
    ]
    refused = [t for t in wanted if t in blocked]
    if refused:
        names = ", ".join(f"`{t}`" for t in refused)
        raise TagError(f"Not allowed on this server: {names}. Remove and try again.")
    if age_restricted:
        return prompt
    if prompt.rating in _UNSAFE:
        raise TagError(
            f"`{prompt.rating}` needs an age-restricted channel, and this channel is not "
            "age-restricted. Use `safe` here."
        )
    notes = list(prompt.notes)
    if prompt.rating is Rating.SUGGESTIVE:
        notes.append("This channel is not age-restricted, so the rating is `safe`.")
    negatives = prompt.negatives
    if Rating.SAFE.value in negatives:
        negatives = tuple(n for n in negatives if n != Rating.SAFE.value)
        notes.append("This channel is not age-restricted: dropped the negative `safe`.")
    return prompt.model_copy(
        update={"rating": Rating.SAFE, "negatives": negatives, "notes": tuple(notes)}
    )


# --- rendering ------------------------------------------------------------------------------


def render(prompt: TagPrompt, model: ModelEntry, *, age_restricted: bool) -> RenderedPrompt:
    """Write the prompt the way `model`'s captions were written.

    Precedence: the rating (policy) always stays; the user's and the channel's negatives
    beat positive tags; the user's positive tags beat the model's default negatives and
    default quality tags (a typed `scrN` replaces the model's score tag).
    Outside age-restricted channels the rating is `safe` whatever the prompt says: policy
    (apply_channel_policy) has already told the user; this is the last line of defence.
    """
    separator = model.namespace_separator if model.namespace_separator in (":", "=") else ":"
    aliases = {_config_tag(k): _config_tag(v) for k, v in model.aliases.items()}
    aliases = {k: v for k, v in aliases.items() if k and v}
    rewrites = {_word(k): _word(v) for k, v in model.namespace_rewrites.items()}

    def namespaced(ns: str, value: str) -> str:
        return f"{rewrites.get(ns) or ns}{separator}{value}"

    def model_form(tag: str) -> str:  # canonical `tag` or `ns:value` -> the model's words
        tag = aliases.get(tag, tag)
        ns = _split_ns(tag)
        return namespaced(*ns) if ns else tag

    def config_tags(values: Iterable[str]) -> list[str]:
        return [model_form(t) for t in map(_config_tag, values) if t]

    user_tags = [model_form(t) for t in prompt.tags]
    user_negatives = [model_form(t) for t in prompt.negatives]
    unsafe = [] if age_restricted else config_tags(model.unsafe_negative_tags)
    refused = set(user_negatives) | set(unsafe)

    rating = prompt.rating if age_restricted else Rating.SAFE
    quality = []
    typed_score = any(_is_score(t) for t in user_tags)
    for tag in config_tags(model.quality_tags):
        if tag in _RATINGS:  # a rating among quality tags is the model's default rating
            if rating is None and tag not in refused:
                rating = _RATINGS[tag]
        elif tag not in user_tags and not (typed_score and _is_score(tag)):
            quality.append(tag)
    positive = [
        *quality,
        *user_tags,
        *(namespaced("artist", a) for a in prompt.artists),
        *(namespaced(n, v) for n, v in prompt.namespaced),
    ]
    positive = [t for t in _dedupe(positive) if t not in refused and t != rating]
    if rating is not None:
        positive.insert(0, rating.value)
    defaults = [t for t in config_tags(model.negative_tags) if t not in positive]
    negative = [t for t in _dedupe([*user_negatives, *defaults, *unsafe]) if t != rating]

    if model.tag_style is TagStyle.SPACE:
        positive = [t.replace(" ", "_") for t in positive]
        negative = [t.replace(" ", "_") for t in negative]
        joiner = " "
    else:
        joiner = ", "
    return RenderedPrompt(
        positive=joiner.join(positive), negative=joiner.join(negative), tag_count=len(positive)
    )
