"""The tag language of `/pony tags:...`: read what users type, write it the way each model's
training captions were written.

    parse_tags(text, profile=...)  ->  TagPrompt        derpibooru's own spelling, in typed order
    render(prompt, model, ...)     ->  RenderedPrompt   the caption the model sees, with notes

What a channel or a server refuses is ponybot_request/policy.py's job, checked on the rendered
caption.

Canonical form is how derpibooru, and so the training metadata, spells tags: `oc only`,
`artist:lulubell`, `oc:kindle` (the metadata example in Lun's training notes, LunNova/Blog
content/articles/stable-diffusion-training-notes/index.md @ 129cc1a). So: NFKC and casefolded,
`_` read as a space, single spaces, namespaced tags as `ns:value` (`by=x` and `artist=x` read
as `artist:x`), ratings by their name however they are punctuated (`Explicit!`,
`rating:explicit`). Nothing about a particular model is written here: its `CaptionProfile`
(ponybot_core/config.py, filled in config.toml with the evidence) says how its captions were
written.

Rendering follows the training code's caption builder (translunar-diffusion
data/metadata/metadata.py @ 06e6206): tags from `non_caption_tags` were removed, the score tag
`scrN` added, the tags joined, then the ordered `replacements` run as substring replacements
(so they also hit inside a tag: `twilight sparkle (alicorn)` -> `twilight (alicorn)`). The
training ran them over the joined caption; we run them per tag, which is the same for rules
that do not contain the separator (config validation of the shipped rules: tests) and lets us
tell the user which tags changed. Decisions (tests/test_tags.py spells each one out):

- Separators. Commas separate tags. Without a comma the text is read one tag per word when the
  model's captions are space-separated with `_` inside tags (V2), or when it looks like such a
  caption (a word with `_`, an `ns=value`, a score tag) and the model was not trained on
  sentences (V5, V6 XL were); otherwise it is one tag, so a comma-free prompt such as
  pony-diffusion's card example reaches the model unchanged.
- Order. The user's order is kept: training shuffled half the captions, so order carries no
  meaning, and a caption pasted as is stays as is. A rating or score tag the bot adds goes
  first (rating, then score), where CLIP's 75-token window never cuts it.
- Ratings: at most one; when several are given the most explicit wins, so policy judges the
  riskiest thing asked for. A rating is read in any model's vocabulary (`rating_explicit` of
  V6 XL, `score_explicit` of V5, derpibooru's `explicit`) and written in the target model's
  (`CaptionProfile.rating_tags`). Outside age-restricted channels `suggestive` becomes the
  model's `safe` and a missing rating is its `safe`; `questionable`/`explicit` are left for
  ponybot_request/policy.py to refuse.
- The card's quality prefix (`CaptionProfile.quality_prefix`, V6 XL's `score_9, score_8_up,
  ...`) comes first, where the card's template puts it, then the rating and score tag the bot
  adds, then what was typed; a server can turn the prefix off (`render(quality_prefix=False)`).
- A tag both wanted and negative is kept as a negative only.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from ponybot_core.config import CaptionProfile, Limits, LongPrompts, ModelEntry
from ponybot_request import clip_tokens

# Discord caps an option at 6000 characters; anything longer is not a real prompt.
MAX_INPUT_CHARS = 10_000
EXAMPLE = "`twilight sparkle, unicorn, solo`"
# CLIP reads 77 positions: BOS, 75 prompt tokens, EOS.
TOKEN_WINDOW = 75
# How many tags a note names before "and N more".
_NAMED = 6
_T = TypeVar("_T")


class Rating(StrEnum):
    # Declared from least to most explicit: the order is used to pick among several.
    SAFE = "safe"
    SUGGESTIVE = "suggestive"
    QUESTIONABLE = "questionable"
    EXPLICIT = "explicit"


_RATINGS = {r.value: r for r in Rating}
# Input spelling -> derpibooru's namespace.
_NAMESPACE_SYNONYMS = {"by": "artist"}


class TagError(ValueError):
    """The tags cannot be used; str() is a sentence to show the user as is."""


class TagPrompt(BaseModel):
    """What the user asked for, in canonical form. Build it with `parse_tags`."""

    model_config = ConfigDict(frozen=True)

    # Wanted tags in the order typed, the rating among them; namespaced ones as `ns:value`.
    items: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def rating(self) -> Rating | None:
        return next((_RATINGS[t] for t in self.items if t in _RATINGS), None)

    @property
    def tags(self) -> tuple[str, ...]:
        """Wanted tags that are neither the rating nor namespaced."""
        return tuple(t for t in self.items if t not in _RATINGS and split_namespace(t) is None)

    @property
    def artists(self) -> tuple[str, ...]:
        return tuple(ns[1] for ns in map(split_namespace, self.items) if ns and ns[0] == "artist")

    @property
    def namespaced(self) -> tuple[tuple[str, str], ...]:
        return tuple(ns for ns in map(split_namespace, self.items) if ns and ns[0] != "artist")

    @property
    def has_positive(self) -> bool:
        return any(t not in _RATINGS for t in self.items)

    @property
    def is_empty(self) -> bool:
        return not (self.items or self.negatives)


class RenderedPrompt(BaseModel):
    model_config = ConfigDict(frozen=True)

    positive: str
    negative: str
    tag_count: int
    # What the user should know: tags left out, rewritten, never seen, past the token window.
    notes: tuple[str, ...] = ()


# --- cleaning -------------------------------------------------------------------------------

# Mentions, channels, roles, custom emoji, timestamps, slash-command links, pings, URLs. No
# pattern contains a space and matches become a space, so one pass leaves none behind.
_DISCORD_JUNK = re.compile(
    r"<(?:@[!&]?\d+|#\d+|a?:\w+:\d+|t:-?\d+(?::[a-z])?|/[\w-]+:\d+)>"
    r"|@(?:everyone|here)\b|https?://\S+"
)
# Markdown that Discord would act on; derpibooru tags never contain these.
_MARKDOWN = re.compile(r"[`*~|\\]")
# Derpibooru namespaces are one or two words (`artist`, `oc`, `art pack`).
_NAMESPACED = re.compile(r"([^\W\d_][\w-]*(?: [\w-]+)?) ?[:=] ?(\S.*)")
_SPACED_SEPARATOR = re.compile(r" ?([:=]) ?")
_SCORE = re.compile(r"scr[0-9]+")
_SPACE_STYLE_HINT = re.compile(r"(?:^|\s)(?:\S*_\S*|[^\W\d_][\w-]*=\S+|scr[0-9]+)(?=\s|$)")
_NOT_ALNUM = re.compile(r"[\W_]+")
_ALNUM_RUN = re.compile(r"[^\W_]+")
_COMMAS_OR_SPACES = re.compile(r"[\s,]+")


def fold(text: str) -> str:
    """NFKC + casefold until both hold: casefolding can un-normalise and vice versa."""
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", text.casefold())
        if folded == text:
            break
        text = folded
    return text


# Letters that read as a Latin one, by two rules (tests/test_model_profiles.py checks the
# second over all of Unicode, the first by examples from each script):
# - Unicode TR39's confusables (confusables.txt, as the confusable-homoglyphs package ships it)
#   whose prototype is one Latin letter, for the letters of the Latin, Cyrillic, Greek,
#   Armenian, Coptic, Cherokee and Lisu scripts that NFKC does not already make ASCII;
# - every Latin, Cyrillic or Greek "<letter> WITH <mark>" (hook, stroke, descender, tick, ...)
#   that has no decomposition for NFKD to strip, read as its <letter> where that one reads as a
#   Latin letter: Cyrillic `ҳ` (ha with descender) reads x as `х` does, `ł` reads l;
# and the small forms of the Coptic and Latin capitals found so that look as their capitals do
# (Coptic `ⲭ` as `Ⲭ`).
# The common ones are spelled out below; _MORE_LOOKALIKES holds the rest, by the letter read.
# Capitals first, before casefolding merges them with a lowercase letter that looks like another
# (Greek `Ν` reads N, its `ν` reads v; `Ή` reads H, its `ή` would read n; `ᾳ` would fold to `αι`).
_MORE_LOOKALIKES = {
    "a": "ȺᎪᶏᶐẚᾀᾁᾂᾃᾄᾅᾆᾇᾈᾉᾊᾋᾌᾍᾎᾏᾲᾳᾴᾷᾼⱥꓮ",
    "b": "ƀƁƂƃƄƅɃɓᏏᏴᵬᶀꓐꞖꞗꞴꞵ",
    "c": "ƇƈȻȼɕϲϹҪҫᏟⲤⲥꓚꜾꞒꞓꞔꟄꮯ𝼝",
    "d": "ĐđƊƋƌȡɖɗᎠᏧᵭᶁᶑꓒꓓꟇꟈ",
    "e": "ɆɇҽҾҿᎬᶒⱸꓰꬲꬴ",
    "f": "ƑƒϜքᵮᶂꓝꞘꞙꬵ",
    "g": "ƍƓǤǥɠʛԌցᏀᏳᶃꓖꞠꞡꬶ",
    "h": "ĦħɦΉҢңӇӈӉӊԢԣԦԧԨԩհᎻᏂἨἩἪἫἬἭἮἯᾘᾙᾚᾛᾜᾝᾞᾟῊΉῌⱧⱨⲎⲏꓧꞕꞪ",
    "i": "ƗɨͺᎥᵼᶖꙇꭵ𝼚",
    "j": "ɈɉɟʄʝᎫꓙꞲ",
    "k": "ƘƙҚқҜҝҞҟӃӄᏦᶄⱩⱪⲔⲕꓗꝀꝁꝂꝃꝄꝅꞢꞣ",
    "l": "ĿŀŁłƚǀȴȽɫɬɭᏞᴌᶅⱠⱡⱢⲒⳐꓡꓲꝈꝉꞎꞭꬷꬸꬹ𝼄𝼑𝼓",
    "m": "ɱϺӍӎᎷᵯᶆⱮⲘⲙꓟꬺ",
    "n": "ƝƞȠȵɲɳոռᵰᶇᾐᾑᾒᾓᾔᾕᾖᾗῂῃῄῇⲚⲛꓠꞐꞑꞤꞥꬻ",
    "o": "ØøƟǾǿɵσՕօᴑᴓⱺⲞⲟꓳꝊꝋꝌꝍꬽꬾ𝼛",
    "p": "ƤƥҎҏᏢᵱᵽᶈⱣⲢⲣꓑꝐꝑꝒꝓꝔꝕ",
    "q": "ɊɋʠգզꝖꝗꝘꝙ",
    "r": "ɌɍɼɽɾɿгҐґҒғҔҕӶӷӺӻᎡᏒᴦᵲᵳᶉⱤⲅꓣꞦꞧꭆꭇꭈꭉꭊꮁ𝼖",
    "s": "ƽȿʂՏᏕᏚᵴᶊẜẝⱾꓢꞨꞩꟅꟉꟊꮪ𝼞",
    "t": "ŦŧƫƬƭƮȶȾʈҬҭᎢᵵⱦⲦⲧꓔꚊꚋ𝼉",
    "u": "ՍսᶙꓴꞟꞸꞹꭎꭒ",
    "v": "ƲʋᏙᶌⱱⱴꓦꝞꝟꮩ",
    "w": "ɯɰѡѼѽաᎳᏔⱲⱳꓪꮃ",
    "x": "ҲҳӼӽӾӿᶍⲬⲭꓫꞳꭓꭔꭕꭖꭗꭘꭙ",
    "y": "ƳƴɎɏɣΎΫγϒҰұᎩᎽỾỿὙὛὝὟῨῩῪΎⲨⲩꓬꭚ",
    "z": "ƵƶȤȥɀʐʑᏃᵶᶎⱫⱬⱿꓜꟆꮓ",
}
_MORE = {alike: latin for latin, alikes in _MORE_LOOKALIKES.items() for alike in alikes}
_LOOKALIKE_CAPITALS = str.maketrans({
    **{alike: latin for alike, latin in _MORE.items() if alike.casefold() != alike},
    "А": "a", "В": "b", "Е": "e", "К": "k", "М": "m", "Н": "h", "О": "o", "Р": "p", "С": "c",
    "Т": "t", "У": "y", "Х": "x", "І": "i", "Ј": "j", "Ѕ": "s", "Ү": "y", "Ԛ": "q", "Ԝ": "w",
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n",
    "Ο": "o", "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x",
})
_LOOKALIKES = str.maketrans({
    **_MORE,
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ү": "y", "ԁ": "d", "һ": "h",
    "ԛ": "q", "ԝ": "w", "ӏ": "l", "ѵ": "v", "ь": "b",
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j", "η": "n", "μ": "u", "ζ": "z",
    "ı": "i", "ȷ": "j", "ɡ": "g", "ɑ": "a", "ɩ": "i", "ɪ": "i", "ʏ": "y", "ɴ": "n", "ʀ": "r",
    "ʜ": "h", "ʟ": "l", "ɢ": "g", "ʙ": "b", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴊ": "j",
    "ᴋ": "k", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
    "ꜱ": "s",
})


def skeleton(text: str) -> str:
    """How a person reads text, for matching only (never written into a caption): folded,
    accents and other combining marks dropped (NFKD), look-alike letters as the Latin ones
    (`еxplicit` with a Cyrillic `е`, `explıcıt`, `éxplicit` all read `explicit`)."""
    text = unicodedata.normalize("NFKD", fold(text.translate(_LOOKALIKE_CAPITALS)))
    marks = ("Mn", "Me")
    return "".join(c for c in text if unicodedata.category(c) not in marks).translate(_LOOKALIKES)


def squash(text: str) -> str:
    """Only the letters and digits, as a person reads them (`skeleton`): how a tag reads
    whatever its punctuation and look-alike letters. For matching only."""
    return _NOT_ALNUM.sub("", skeleton(text))


def spells(tag: str, word: str) -> bool:
    """Whether `tag` has `word`'s letters as one of its words or a run of its words, however
    punctuated: `suggestive pose`, `casual_nudity`, `sug-gestive` spell what they contain;
    `unsuggestive` does not spell `suggestive`."""
    letters = squash(word)
    words = _ALNUM_RUN.findall(skeleton(tag))
    for start in range(len(words)):
        run = ""
        for part in words[start:]:
            run += part
            if len(run) >= len(letters):
                if run == letters:
                    return True
                break
    return False


def _clean(text: str, notes: list[str]) -> str:
    text = re.sub(r"\s", " ", text)
    # Control/format characters first: deleting them must not leave un-normalised text behind.
    kept = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co"))
    if len(kept) != len(text):
        notes.append("Removed invisible control characters.")
    text = fold(kept)
    # Replaced by a space, not deleted, so no new junk or combining sequence can form.
    text, markdown = _MARKDOWN.subn(" ", text)
    text, junk = _DISCORD_JUNK.subn(" ", text)
    if markdown or junk:
        notes.append("Removed Discord mentions, links and formatting characters.")
    return text


def _canon(item: str) -> str:
    """One cleaned item -> canonical tag text (no sign, `_` as space, single spaces)."""
    return " ".join(item.replace("_", " ").split()).lstrip("- ")


def split_namespace(tag: str) -> tuple[str, str] | None:
    """`artist:x`, `by=x`, `oc: x` -> (derpibooru's namespace, value); None if not namespaced."""
    match = _NAMESPACED.fullmatch(tag)
    if not match:
        return None
    namespace = match.group(1).strip()
    return _NAMESPACE_SYNONYMS.get(namespace, namespace), match.group(2)


# How the pony models' cards prefix a rating: V6 XL's `rating_explicit`, V5's `score_explicit`
# (civitai.com/models/257749, civitai.com/models/95367), derpibooru's search `rating:explicit`.
_RATING_PREFIXES = ("rating", "score")


def rating_of(tag: str) -> Rating | None:
    """The rating a tag spells, however punctuated and in any model's vocabulary: `Explicit!`,
    `rating:explicit`, `e-xplicit`, `rating_explicit` (V6 XL), `score_explicit` (V5)."""
    letters = squash(tag)
    for prefix in _RATING_PREFIXES:
        if letters.startswith(prefix) and letters[len(prefix):] in _RATINGS:
            return _RATINGS[letters[len(prefix):]]
    return _RATINGS.get(letters)


def _canonical(item: str) -> str:
    rating = rating_of(item)
    if rating is not None:
        return rating.value
    ns = split_namespace(item)
    return f"{ns[0]}:{ns[1]}" if ns else item


def _split(text: str, profile: CaptionProfile | None, *, caption: bool) -> list[str]:
    if "," in text:
        return text.split(",")
    if profile is not None and profile.splits_on_spaces:
        return text.split()
    natural = profile is not None and profile.natural_language
    if not caption and not natural and _SPACE_STYLE_HINT.search(text):
        return text.split()
    return [text]


@functools.lru_cache(maxsize=4096)  # pure; `write_tag` reads each profile's keywords with it
def config_tag(text: str) -> str:
    """A tag written in config.toml or stored by `/model block`, in canonical form."""
    return _canonical(_canon(_clean(text, [])))


# --- parsing --------------------------------------------------------------------------------


def parse_tags(
    text: str, negative: str = "", *, profile: CaptionProfile | None = None,
    caption: bool = False,
) -> TagPrompt:
    """Read what the user typed. Never raises: what cannot be used is dropped with a note.

    `profile` is the target model's: space-separated text is one tag per word for models whose
    captions are written that way (module docstring). `caption=True` reads text known to be a
    caption in that profile's language (one rendered earlier): no guessing at V2 style."""
    notes: list[str] = []
    items: list[tuple[str, bool]] = []  # (canonical item, is negative)
    for source, is_negative in ((text, False), (negative, True)):
        if not isinstance(source, str):
            continue
        if len(source) > MAX_INPUT_CHARS:
            notes.append(f"Only the first {MAX_INPUT_CHARS} characters were read.")
            source = source[:MAX_INPUT_CHARS]
        for raw in _split(_clean(source, notes), profile, caption=caption):
            item = raw.strip()
            negated = is_negative or item.startswith("-")
            item = _canon(item)
            if item:
                items.append((item, negated))

    wanted: list[str] = []
    negatives: list[str] = []
    ignored: list[str] = []
    for item, negated in items:
        if not any(unicodedata.category(c)[0] in "LN" for c in item):
            ignored.append(item)  # `...`, `>`, lone emoji: nothing a tagger would write
            continue
        (negatives if negated else wanted).append(_canonical(item))
    if ignored:
        notes.append(f"Ignored {_names(_dedupe(ignored))}: not tags.")

    negatives = _dedupe(negatives)
    banned = set(negatives)
    ratings = [_RATINGS[t] for t in wanted if t in _RATINGS]
    if len(set(ratings)) > 1:
        riskiest = max(ratings, key=list(Rating).index)
        given = ", ".join(r.value for r in _dedupe(ratings))
        notes.append(f"Several ratings given ({given}); using `{riskiest}`, the most explicit.")
        # The riskiest one takes the place of the first rating typed.
        first = next(i for i, t in enumerate(wanted) if t in _RATINGS)
        wanted = [t for i, t in enumerate(wanted) if t not in _RATINGS or i == first]
        wanted[first] = riskiest.value
    conflicts = [t for t in wanted if t in banned]
    for tag in _dedupe(conflicts):
        notes.append(f"`{tag}` is both wanted and negative; kept it as a negative only.")
    return TagPrompt(
        items=tuple(t for t in _dedupe(wanted) if t not in banned),
        negatives=tuple(negatives),
        notes=tuple(_dedupe(notes)),
    )


def _dedupe(values: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(values))


def _names(values: Sequence[str], limit: int = _NAMED) -> str:
    shown = ", ".join(f"`{v}`" for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# --- checks ---------------------------------------------------------------------------------


def validate(prompt: TagPrompt, limits: Limits) -> None:
    """Refuse prompts the bot should not queue. Lengths are measured on the canonical
    comma-separated text: the models' caption languages only shorten it (short forms,
    one-character separators) or add a rating and a score tag."""
    if not prompt.has_positive:
        if prompt.negatives:
            raise TagError(
                "You only gave negative tags; add at least one tag to draw, e.g. " + EXAMPLE
            )
        raise TagError("Give at least one tag, e.g. " + EXAMPLE)
    for kind, values in (
        ("tags", [t for t in prompt.items if t not in _RATINGS]),
        ("negative tags", list(prompt.negatives)),
    ):
        if len(values) > limits.max_tags:
            raise TagError(f"You gave {len(values)} {kind}; at most {limits.max_tags} are allowed.")
    for kind, text in (
        ("tags", ", ".join(prompt.items)),
        ("negative tags", ", ".join(prompt.negatives)),
    ):
        if len(text) > limits.max_prompt_chars:
            raise TagError(
                f"Your {kind} are {len(text)} characters long; "
                f"at most {limits.max_prompt_chars} are allowed."
            )


# --- writing in a model's caption language ----------------------------------------------------


def write_tag(tag: str, profile: CaptionProfile) -> str:
    """One canonical tag as the model's captions wrote it: a rating in the model's vocabulary
    (`explicit` -> `rating_explicit` for V6 XL), a tag its card spells with `_` as the card
    does (`source pony` -> `source_pony`), else the ordered replacements, then `_` for spaces.
    `artist:pierogarts` -> `by=pierogarts` for V1."""
    if tag in _RATINGS and tag in profile.rating_tags:
        return profile.rating_tags[tag]
    keyword = next((k for k in (*profile.quality_prefix, *profile.keyword_tags)
                    if config_tag(k) == tag), None)
    if keyword is not None:
        return keyword
    for old, new in profile.replacements:
        tag = tag.replace(old, new)
    # A short form can shrink words before a separator into what reads as a namespace
    # (`twilight sparkle twilight sparkle :3` -> `twilight twilight =3`); write it the way
    # reading it back spells a namespace, so a caption read back is written the same again.
    if split_namespace(tag) is not None:
        tag = _SPACED_SEPARATOR.sub(r"\1", tag, count=1)
    return tag.replace(" ", "_") if profile.underscores else tag


def caption_tags(caption: str, profile: CaptionProfile) -> list[str]:
    """A caption back into its tags (a button's earlier job, a picture's parameters), split on
    every separator its writer could have used: commas always, whatever the spaces around them
    (a picture's parameters may say `a,b` for any model), and spaces too for models whose
    captions are space-separated (V2: `pony,suggestive solo` is three tags)."""
    separators = _COMMAS_OR_SPACES if profile.splits_on_spaces else ","
    return [t.strip() for t in re.split(separators, caption) if t.strip()]


def for_all_ages(tags: Sequence[str], profile: CaptionProfile) -> tuple[list[str], list[str]]:
    """Wanted tags as a channel that is not age-restricted draws them, and what to tell the
    user: the rating is the model's `safe` (`suggestive` becomes it; with no rating it is put
    first, after the card's quality prefix), and
    a tag that has `suggestive` or one of the profile's `sfw_negative_tags` in it as a word
    (`suggestive pose`, `casual_nudity`) is left out, never kept. A tag with `questionable` or
    `explicit` anywhere in its letters stays, for ponybot_request/policy.py to refuse (when in
    doubt, refuse). Reads canonical tags and a finished caption's written ones alike, each by
    its letters: `Rating: Suggestive!` is `suggestive`."""
    unwanted = [Rating.SUGGESTIVE.value,
                *(t for t in profile.sfw_negative_tags if rating_of(t) is None)]
    refused = (Rating.QUESTIONABLE.value, Rating.EXPLICIT.value)
    safe = write_tag(Rating.SAFE.value, profile)  # `rating_safe` for V6 XL, `score_safe` for V5
    kept: list[str] = []
    gone: list[str] = []
    rated = made_safe = False
    for tag in tags:
        rating = rating_of(tag)
        if rating is Rating.SUGGESTIVE:
            tag, rating, made_safe = safe, Rating.SAFE, True
        if rating is None and not any(r in squash(tag) for r in refused) \
                and any(spells(tag, word) for word in unwanted):
            gone.append(tag)
            continue
        rated = rated or rating is not None
        kept.append(tag)
    if not rated:  # after the card's quality prefix, which its template puts first
        prefix = {squash(t) for t in profile.quality_prefix}
        at = next((i for i, t in enumerate(kept) if squash(t) not in prefix), len(kept))
        kept.insert(at, safe)
    notes = []
    if made_safe:
        notes.append(f"This channel is not age-restricted, so the rating is `{safe}`.")
    if gone:
        notes.append(f"This channel is not age-restricted: left out {_names(gone)}.")
    return _dedupe(kept), notes


def render(prompt: TagPrompt, model: ModelEntry, *, age_restricted: bool,
           quality_prefix: bool = True) -> RenderedPrompt:
    """Write the prompt the way `model`'s captions were written (its `caption` profile), after
    its card's quality prefix unless the server turned it off (`quality_prefix=False`).

    Precedence: the user's negatives beat wanted tags (parse_tags); outside age-restricted
    channels the channel's negatives do too (`for_all_ages`); wanted tags beat the model's
    default negatives,
    and a typed score tag replaces the model's default one."""
    profile = model.caption
    notes: list[str] = []
    items = list(prompt.items)

    # 1. The rating, and outside age-restricted channels what such a channel allows (the
    #    refusals are ponybot_request/policy.py's; this only spells what is drawn).
    rating = prompt.rating
    if not age_restricted:
        items, channel_notes = for_all_ages(items, profile)
        notes += channel_notes
        if rating in (None, Rating.SUGGESTIVE):
            rating = Rating.SAFE
    unseen_tags = {config_tag(t) for t in profile.unseen_tags}
    ratings = {config_tag(r) for r in profile.ratings}
    if rating is not None and rating.value not in ratings | unseen_tags:
        known = ", ".join(f"`{r}`" for r in profile.ratings) or "no rating"
        notes.append(f"The model's captions are only known to carry {known}, not `{rating}`.")

    # 2. Tags the training removed from captions, and tags whose images it left out.
    dropped_tags = {config_tag(t) for t in profile.dropped_tags}
    dropped = [t for t in items if t in dropped_tags]
    items = [t for t in items if t not in dropped_tags]
    if dropped:
        notes.append(f"Left out {_names(dropped)}: the model's training captions never had "
                     f"{'it' if len(dropped) == 1 else 'them'}.")
    unseen = [t for t in items if t in unseen_tags]
    if unseen:
        notes.append(f"The model never saw {_names(unseen)}: its training left out the images "
                     "tagged so. Kept, but expect little effect.")

    # 3. The score tag.
    scores = [t for t in items if _SCORE.fullmatch(t)]
    buckets = {f"scr{n}" for n in profile.score_buckets}
    odd = [t for t in scores if t not in buckets]
    if odd:
        known_scores = ", ".join(f"`scr{n}`" for n in profile.score_buckets)
        notes.append(f"{_names(odd)}: not a score tag the model's captions had"
                     + (f" ({known_scores})." if known_scores else " (it has none)."))
    score_tag = config_tag(profile.score_tag or "")
    if not scores and score_tag and score_tag not in prompt.negatives:
        items.insert(1 if items and rating_of(items[0]) is not None else 0, score_tag)

    # 4. Each tag in the model's words, after the card's quality prefix (its template's first
    #    tags; one the user asked to keep out stays out).
    prefix = [config_tag(t) for t in profile.quality_prefix] if quality_prefix else []
    items = [*(t for t in prefix if t not in prompt.negatives), *items]
    written = [(tag, write_tag(tag, profile)) for tag in items]
    positive = _dedupe(w for _, w in written if w)
    rewritten = [  # a rating in the model's vocabulary is no news: the caption shows it
        f"`{tag}` → `{word}`" for tag, word in _dedupe(written)
        if word != tag and word != tag.replace(" ", "_") and tag not in _RATINGS
    ]
    if rewritten:
        shown = ", ".join(rewritten[:_NAMED])
        more = f" and {len(rewritten) - _NAMED} more" if len(rewritten) > _NAMED else ""
        notes.append(f"Written as the model's captions were: {shown}{more}.")

    defaults = [config_tag(t) for t in profile.negative_tags]
    channel_negatives = [] if age_restricted else [config_tag(t) for t in profile.sfw_negative_tags]
    negative = _dedupe(
        w for w in (write_tag(t, profile) for t in [*prompt.negatives, *defaults,
                                                      *channel_negatives])
        if w and w not in positive
    )

    # 5. CLIP's window. A truncating model's negative prompt is cut the same way: longer, it
    #    would be encoded in a second chunk and the positive padded to match, which the model
    #    never saw in training. The tags the bot adds go first, so they are what is kept.
    positive, window_note = _fit_window(positive, profile)
    if window_note:
        notes.append(window_note)
    if profile.long_prompts is LongPrompts.TRUNCATE:
        added = [w for w in negative if w not in {write_tag(t, profile) for t in prompt.negatives}]
        ours = [*added, *(w for w in negative if w not in added)]
        kept, cut_note = _fit_window(ours, profile, what="negative prompt")
        if cut_note:
            negative = kept
            notes.append(cut_note)
    return RenderedPrompt(
        positive=profile.separator.join(positive),
        negative=profile.separator.join(negative),
        tag_count=len(positive),
        notes=tuple(notes),
    )


def _fit_window(tags: list[str], profile: CaptionProfile, *,
                what: str = "") -> tuple[list[str], str | None]:
    """The tags that fit in CLIP's 75 tokens, and what to tell the user about the rest
    (`what`: which prompt, for a negative one)."""
    ends = clip_tokens.running_counts(tags, profile.separator)
    if not ends or ends[-1] <= TOKEN_WINDOW:
        return tags, None
    past = [tag for tag, end in zip(tags, ends, strict=True) if end > TOKEN_WINDOW]
    if profile.long_prompts is LongPrompts.TRUNCATE:
        if any(rating_of(t) is not None for t in past):
            # The rating is what policy judged: it stays, at the front, and the rest is cut.
            first = [t for t in tags if rating_of(t) is not None]
            return _fit_window([*first, *(t for t in tags if rating_of(t) is None)], profile,
                               what=what)
        kept = tags[: len(tags) - len(past)]
        while len(kept) > 1 and clip_tokens.count(profile.separator.join(kept)) > TOKEN_WINDOW:
            past.insert(0, kept.pop())  # running_counts is exact but at punctuation
        where = f" of the {what}" if what else ""
        return kept, (f"Left out {_names(past)}{where}: past the {TOKEN_WINDOW} tokens CLIP "
                      "reads. Put what matters first.")
    return tags, (f"{_names(past)} {'lies' if len(past) == 1 else 'lie'} past CLIP's first "
                  f"{TOKEN_WINDOW} tokens: encoded in a second chunk. Put what matters first.")
