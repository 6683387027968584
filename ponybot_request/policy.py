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
`explicit` (so `rating:explicit` and `unquestionable` too: when in doubt, refuse). That also
covers every model's own spelling of those ratings (V6 XL's `rating_explicit`, V5's
`score_questionable`), whatever the model: the refusal suggests the model's own `safe`. A blocked
tag refuses a caption that has its words in a row, or a piece that squashes to it, in any
caption language the bot knows: each configured model's spelling of it counts
(`twilight sparkle` blocked also blocks V1's `twilight`, `artist:x` also `by=x`).

Words and pieces are read as a person reads them (`tags.skeleton`): accents dropped and
look-alike letters as Latin ones, so `еxplicit` with a Cyrillic `е`, `explıcıt` and `ráinbow
dash` are what they look like. Only for matching: the caption the model sees is not rewritten.
Reading a caption costs about its length times the longest blocked spelling, however many
tags are blocked (`BlockedSearch`), since it runs on the bot's event loop.

`apply` is what every job goes through (`ponybot_request.jobs.build_job`), whatever wrote its
caption: `/pony`'s own rendering, an earlier job (the buttons), a picture's parameters (Draw
this). It first refuses a caption with more tags than `/pony` takes (`check_tag_count`).
Outside age-restricted channels it then makes the caption one such a channel draws, read back
into tags on every separator its writer could have used (`tags.caption_tags`: commas always,
spaces too for a space-separated model, so a picture's `pony,suggestive,solo` is three
tags on V2): the rating `safe`, any tag with `suggestive` or one of the model's
`sfw_negative_tags` in it as a word left out with a note (`tags.for_all_ages`), those tags
added to the negative prompt and `safe` taken out of it; then it checks the caption as above.
A caption `/pony` rendered for the channel already is left exactly as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ponybot_core.config import Config, ModelEntry
from ponybot_request.errors import UserFacingError
from ponybot_request.tags import (
    Rating,
    caption_tags,
    config_tag,
    for_all_ages,
    rating_of,
    skeleton,
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
    check_tag_count(caption, negative, model=model, config=config)
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
                  blocked_tags=blocked_tags, earlier=earlier,
                  safe=write_tag(Rating.SAFE.value, model.caption))
    return Allowed(caption, negative, tuple(notes))


def check_tag_count(caption: str, negative: str, *, model: ModelEntry, config: Config) -> None:
    """Refuse, as `/pony` does, a caption or negative prompt with more than `limits.max_tags`
    tags, whatever wrote it (a picture's parameters can hold hundreds). What the bot adds is
    not counted (the rating, the model's score tag and quality prefix, its default and channel
    negatives), so a
    caption it wrote for a legal `/pony` stays legal to re-draw."""
    profile = model.caption
    limit = config.limits.max_tags
    score = squash(write_tag(config_tag(profile.score_tag or ""), profile))
    prefix = {squash(t) for t in profile.quality_prefix}
    added = {squash(write_tag(config_tag(t), profile))
             for t in (*profile.negative_tags, *profile.sfw_negative_tags)}
    counted = (
        ("tags", [t for t in caption_tags(caption, profile)
                  if rating_of(t) is None and squash(t) != score and squash(t) not in prefix]),
        ("negative tags", [t for t in caption_tags(negative, profile) if squash(t) not in added]),
    )
    for kind, tags in counted:
        if len(tags) > limit:
            raise UserFacingError(f"You gave {len(tags)} {kind}; at most {limit} are allowed.")


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
    safe: str = Rating.SAFE.value,
) -> None:
    """Raise UserFacingError (so nothing is queued) if the caption may not be drawn here.
    `earlier` names where a button's caption came from ("This picture"), None for /pony;
    `safe` is the model's word for it (`rating_safe` for V6 XL), which a refusal suggests."""
    pieces = _pieces(caption)
    if not age_restricted:
        for rating in REFUSED_OUTSIDE_AGE_RESTRICTED:
            hit = next((p for p, letters in pieces if rating.value in letters), None)
            if hit is not None:
                spelled = f" (as `{hit}`)" if hit != rating.value else ""
                raise UserFacingError(
                    f"`{rating}`{spelled} needs an age-restricted channel, and this channel is "
                    "not age-restricted. "
                    + (f"{earlier} can only be re-drawn in one." if earlier
                       else f"Use `{safe}` here.")
                )
    search = BlockedSearch.for_tags(blocked_tags, config)
    refused = [f"`{found}`" + (f" (blocked: `{blocked}`)" if found != blocked else "")
               for blocked, found in search.find(caption, pieces).items()]
    if refused:
        raise UserFacingError(
            f"Not allowed on this server: {', '.join(refused)}. "
            + (f"{earlier} has it, so it is not re-drawn here." if earlier
               else "Remove and try again.")
        )


def _words(text: str) -> list[str]:
    return _WORD.findall(skeleton(text))


def _pieces(caption: str) -> list[tuple[str, str]]:
    """(piece as written, squashed) for every space- and every comma-separated piece, the
    shorter ones first so that a refusal names the least it can."""
    parts = [*re.split(r"[\s,]+", caption), *caption.split(",")]
    squashed = ((p.strip(), squash(p)) for p in parts)
    return [(p, letters) for p, letters in squashed if letters]


_Key = tuple[int, int]  # (blocked tag, spelling), each by its position


@dataclass
class _Node:
    next: dict[str, _Node] = field(default_factory=dict)
    ends: list[_Key] = field(default_factory=list)


class BlockedSearch:
    """Every spelling of every blocked tag, indexed so that reading a caption costs about its
    words times the longest spelling's, however many tags are blocked: a piece is looked up by
    its letters (a dict), and from each word only the spellings starting with it are followed
    (a trie of words). `steps` counts the words followed, for the tests' bound."""

    def __init__(self, spellings: Mapping[str, Sequence[str]]) -> None:
        self._blocked = list(spellings)
        self._wanted: dict[_Key, tuple[str, ...]] = {}
        self._letters: dict[str, list[_Key]] = {}
        self._root = _Node()
        self.steps = 0
        for b, spelled in enumerate(spellings.values()):
            for s, spelling in enumerate(spelled):
                wanted = tuple(_words(spelling))
                if not wanted:
                    continue
                self._wanted[(b, s)] = wanted
                self._letters.setdefault("".join(wanted), []).append((b, s))
                node = self._root
                for word in wanted:
                    node = node.next.setdefault(word, _Node())
                node.ends.append((b, s))

    @classmethod
    def for_tags(cls, blocked_tags: Iterable[str], config: Config) -> BlockedSearch:
        """The server's blocked tags, each in canonical form and in every model's spelling."""
        return cls({
            blocked: _dedupe([blocked, *(write_tag(blocked, m.caption) for m in config.models)])
            for blocked in _dedupe(config_tag(t) for t in blocked_tags)
        })

    def find(self, caption: str, pieces: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Each blocked tag the caption spells -> how it spells it (module docstring): the
        first piece that squashes to a spelling or has its words in a row, else the words in
        a row across tags (still what the model reads); the first spelling found counts."""
        if not self._wanted:
            return {}
        hits: dict[_Key, str] = {}
        for piece, squashed in pieces:
            for key in (*self._letters.get(squashed, ()), *self._runs(_words(piece))):
                hits.setdefault(key, piece)
        for key in self._runs(_words(caption)):
            hits.setdefault(key, " ".join(self._wanted[key]))
        found: dict[str, str] = {}
        for b, s in sorted(hits):
            found.setdefault(self._blocked[b], hits[(b, s)])
        return found

    def _runs(self, words: Sequence[str]) -> Iterator[_Key]:
        """The spellings whose words stand in a row somewhere in `words`."""
        for start in range(len(words)):
            node: _Node | None = self._root
            for at in range(start, len(words)):
                self.steps += 1
                node = node.next.get(words[at]) if node else None
                if node is None:
                    break
                yield from node.ends


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))
