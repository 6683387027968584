"""The tag language (bot/tags.py): a readable specification, then hypothesis properties."""

from __future__ import annotations

import re
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bot.tags import (
    MAX_INPUT_CHARS,
    Rating,
    RenderedPrompt,
    TagError,
    TagPrompt,
    apply_channel_policy,
    parse_tags,
    render,
    validate,
)
from core.config import Limits, ModelEntry, TagStyle

# --- the models, as config.toml ships them ---------------------------------------------------

UNSAFE = ["explicit", "questionable", "suggestive", "nudity"]

V1 = ModelEntry(
    id="lun-v1",
    name="Lun's V1",
    path="models/lun-v1",
    tag_style=TagStyle.COMMA,
    quality_tags=["scr800"],
    negative_tags=["scr5"],
    unsafe_negative_tags=UNSAFE,
)
V2 = ModelEntry(
    id="lun-v2",
    name="Lun's V2",
    path="models/lun-v2",
    tag_style=TagStyle.SPACE,
    quality_tags=["scr100"],
    negative_tags=["scr5"],
    unsafe_negative_tags=UNSAFE,
    # Keys written as an editor might: any case, `_` or spaces.
    aliases={
        "Twilight_Sparkle": "twilight",
        "princess luna": "luna",
        "rainbow dash": "dashie",
        "pinkie_pie": "pinkie",
        "applejack": "aj",
        "nightmare moon": "nmm",
        "queen chrysalis": "chrissy",
        "starlight glimmer": "glim",
        "sunset shimmer": "sunshim",
    },
    namespace_rewrites={"artist": "by"},
    namespace_separator="=",
)
PONY_DIFFUSION = ModelEntry(
    id="pony-diffusion",
    name="pony-diffusion",
    path="models/pony-diffusion",
    tag_style=TagStyle.COMMA,
    quality_tags=["safe"],  # its card recommends `safe`: a default rating, see render()
    unsafe_negative_tags=UNSAFE,
)
MODELS = [V1, V2, PONY_DIFFUSION]
LIMITS = Limits(max_tags=10, max_prompt_chars=100)

V1_CAPTION = "fluttershy, blush, pony, cute, solo, scr800, flying, pegasus"
V2_CAPTION = (
    "pony s5_starlight unicorn glimmer scr100 bust mare portrait by=pierogarts female safe "
    "looking_at_you solo"
)


def words(rendered: str, model: ModelEntry) -> list[str]:
    if not rendered:
        return []
    return rendered.split(" " if model.tag_style is TagStyle.SPACE else ", ")


def draw(text: str, model: ModelEntry, *, negative: str = "", age_restricted: bool = True) -> str:
    return render(parse_tags(text, negative), model, age_restricted=age_restricted).positive


# --- parsing ---------------------------------------------------------------------------------


def test_comma_separated_tags_in_order():
    prompt = parse_tags("twilight sparkle, unicorn, solo")
    assert prompt.tags == ("twilight sparkle", "unicorn", "solo")
    assert prompt.has_positive and not prompt.is_empty and prompt.notes == ()


def test_underscores_and_spaces_are_the_same_tag():
    assert parse_tags("looking_at_you").tags == ("looking at you",)
    assert parse_tags("  Looking   At_You ,").tags == ("looking at you",)


def test_stray_whitespace_empty_items_and_duplicates():
    prompt = parse_tags(" a ,, b,a , B,\tc ,")
    assert prompt.tags == ("a", "b", "c")  # first occurrence keeps its place


def test_case_and_unicode():
    prompt = parse_tags("Fluttershy, CAFÉ, ポニー, Straße, ｆｕｌｌｗｉｄｔｈ")
    assert prompt.tags == ("fluttershy", "café", "ポニー", "strasse", "fullwidth")


def test_discord_junk_is_dropped_with_a_note():
    prompt = parse_tags("<@123> solo, `unicorn`, **cute**, <:pony:987>, @everyone, blush\x00\u200b")
    assert prompt.tags == ("solo", "unicorn", "cute", "blush")
    assert any("Discord" in n for n in prompt.notes)
    assert any("control characters" in n for n in prompt.notes)


def test_items_without_letters_are_ignored_with_a_note():
    prompt = parse_tags("solo, ..., >, :3")
    assert prompt.tags == ("solo", ":3")
    assert any("`...`" in n and "not tags" in n for n in prompt.notes)


def test_negatives_with_a_dash_or_the_negative_option():
    prompt = parse_tags("solo, -looking_at_you, --sad", negative="blurry, -text, artist:nobody")
    assert prompt.tags == ("solo",)
    assert prompt.negatives == ("looking at you", "sad", "blurry", "text", "artist:nobody")


def test_a_tag_both_wanted_and_negative_is_negative_only():
    prompt = parse_tags("solo, sad, artist:x, oc:y", negative="sad, by=x, oc=y")
    assert prompt.tags == ("solo",)
    assert prompt.artists == () and prompt.namespaced == ()
    assert prompt.negatives == ("sad", "artist:x", "oc:y")
    assert sum("both wanted and negative" in n for n in prompt.notes) == 3


def test_namespaces():
    prompt = parse_tags("artist:Pierogarts, by=someone, oc:Nebula, spoiler: s05e01, art_pack=x")
    assert prompt.artists == ("pierogarts", "someone")  # `by=` is V2's spelling of artist
    assert prompt.namespaced == (("oc", "nebula"), ("spoiler", "s05e01"), ("art pack", "x"))
    assert prompt.tags == ()


def test_ratings_are_taken_out_of_the_tags():
    prompt = parse_tags("solo, Suggestive")
    assert prompt.tags == ("solo",)
    assert prompt.rating is Rating.SUGGESTIVE


def test_several_ratings_the_most_explicit_wins():
    prompt = parse_tags("explicit, solo, safe")
    assert prompt.rating is Rating.EXPLICIT
    assert any("most explicit" in n for n in prompt.notes)
    assert parse_tags("safe, safe").notes == ()


def test_a_negated_rating_is_a_negative_tag():
    prompt = parse_tags("explicit, solo, -explicit")
    assert prompt.rating is None and prompt.negatives == ("explicit",)


def test_unknown_score_bucket_is_kept_with_a_note():
    prompt = parse_tags("solo, scr1000, scr800")
    assert prompt.tags == ("solo", "scr1000", "scr800")
    assert prompt.notes == ("`scr1000` is not a score bucket the models know (scr100, scr800…).",)


def test_space_separated_v2_input_is_understood():
    # No comma, and a word with `_`, an `ns=value` or a score tag: V2 caption style.
    assert parse_tags("pony s5_starlight unicorn").tags == ("pony", "s5 starlight", "unicorn")
    assert parse_tags("pony unicorn by=pierogarts").tags == ("pony", "unicorn")
    assert parse_tags("pony unicorn scr100").tags == ("pony", "unicorn", "scr100")
    # Otherwise no comma means one tag.
    assert parse_tags("twilight sparkle").tags == ("twilight sparkle",)
    assert parse_tags("princess luna, s1_luna").tags == ("princess luna", "s1 luna")


def test_style_can_be_forced_for_text_of_known_style():
    assert parse_tags("pony solo", style=TagStyle.SPACE).tags == ("pony", "solo")
    assert parse_tags("pony s5_starlight", style=TagStyle.COMMA).tags == ("pony s5 starlight",)


def test_huge_input_is_cut_with_a_note():
    started = time.monotonic()
    prompt = parse_tags("solo, " * 1_000_000, "\x00<@1>`" * 300_000)
    assert time.monotonic() - started < 5
    assert prompt.tags == ("solo",)
    assert any(str(MAX_INPUT_CHARS) in n for n in prompt.notes)


def test_prompt_is_frozen():
    with pytest.raises(ValidationError):
        parse_tags("solo").tags = ("x",)  # type: ignore[misc]


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  , ,", "<@123>", "safe"])
def test_no_tags_is_refused(text):
    with pytest.raises(TagError, match=re.escape("Give at least one tag, e.g. `twilight sparkle")):
        validate(parse_tags(text), LIMITS)


def test_only_negatives_is_refused():
    with pytest.raises(TagError, match="only gave negative tags"):
        validate(parse_tags("-solo", negative="sad"), LIMITS)


def test_too_many_tags_is_refused():
    with pytest.raises(TagError, match="You gave 11 tags; at most 10 are allowed"):
        validate(parse_tags(", ".join(f"t{i}" for i in range(11))), LIMITS)
    with pytest.raises(TagError, match="11 negative tags"):
        validate(parse_tags("solo", ", ".join(f"t{i}" for i in range(11))), LIMITS)


def test_too_long_is_refused():
    with pytest.raises(TagError, match="characters long; at most 100"):
        validate(parse_tags("solo, " + "x" * 100), LIMITS)


def test_a_good_prompt_passes():
    validate(parse_tags("twilight sparkle, unicorn, solo, explicit", "sad"), LIMITS)


# --- channel policy --------------------------------------------------------------------------


def test_unrestricted_channel_forces_safe():
    assert apply_channel_policy(parse_tags("solo"), age_restricted=False).rating is Rating.SAFE
    prompt = apply_channel_policy(parse_tags("solo, suggestive"), age_restricted=False)
    assert prompt.rating is Rating.SAFE
    assert any("not age-restricted" in n for n in prompt.notes)


@pytest.mark.parametrize("rating", ["explicit", "questionable"])
def test_unrestricted_channel_refuses_unsafe_ratings(rating):
    with pytest.raises(TagError, match=f"`{rating}`.*this channel is not age-restricted"):
        apply_channel_policy(parse_tags(f"solo, {rating}"), age_restricted=False)


def test_unrestricted_channel_drops_a_negative_safe():
    prompt = apply_channel_policy(parse_tags("solo, -safe"), age_restricted=False)
    assert prompt.rating is Rating.SAFE and prompt.negatives == ()


def test_age_restricted_channel_keeps_the_rating():
    for text, rating in [("solo", None), ("solo, explicit", Rating.EXPLICIT)]:
        prompt = parse_tags(text)
        assert apply_channel_policy(prompt, age_restricted=True) == prompt
        assert prompt.rating is rating


def test_blocked_tags_are_refused_by_name():
    blocked = ["Gore", "artist:bad_artist", "explicit"]
    with pytest.raises(TagError, match="`gore`, `artist:bad artist`"):
        apply_channel_policy(
            parse_tags("solo, GORE, by=bad_artist"), age_restricted=True, blocked_tags=blocked
        )
    with pytest.raises(TagError, match="`explicit`"):
        apply_channel_policy(parse_tags("explicit"), age_restricted=True, blocked_tags=blocked)
    # Negatives and other namespaces are not what is blocked.
    prompt = parse_tags("solo, oc:gore, -gore")
    assert apply_channel_policy(prompt, age_restricted=True, blocked_tags=blocked) == prompt


# --- rendering -------------------------------------------------------------------------------


def test_v1_caption_round_trips_unchanged():
    assert draw(V1_CAPTION, V1) == V1_CAPTION


def test_v2_caption_round_trips():
    rendered = draw(V2_CAPTION, V2)
    # Same tags; the rating moves to the front and namespaced tags to the end (render order).
    assert sorted(rendered.split()) == sorted(V2_CAPTION.split())
    assert rendered == (
        "safe pony s5_starlight unicorn glimmer scr100 bust mare portrait female "
        "looking_at_you solo by=pierogarts"
    )
    assert draw(rendered, V2) == rendered


def test_artists_and_namespaces_per_model():
    assert draw("solo, artist:pierogarts, oc:nebula", V2) == "scr100 solo by=pierogarts oc=nebula"
    assert draw("solo, by=pierogarts, oc=nebula", V1) == (
        "scr800, solo, artist:pierogarts, oc:nebula"
    )


def test_aliases_are_per_model():
    text = "Twilight Sparkle, rainbow_dash, applejack, unicorn"
    assert draw(text, V2) == "scr100 twilight dashie aj unicorn"
    assert draw(text, V1) == "scr800, twilight sparkle, rainbow dash, applejack, unicorn"
    assert draw("twilight sparkle, twilight", V2) == "scr100 twilight"


def test_order_rating_quality_tags_then_namespaced():
    assert draw("oc:x, solo, explicit, artist:y", V1) == "explicit, scr800, solo, artist:y, oc:x"


def test_a_typed_score_replaces_the_default():
    assert draw("solo, scr3200", V2) == "solo scr3200"
    assert draw("scr800, solo", V1) == "scr800, solo"


def test_negative_prompt():
    rendered = render(parse_tags("solo", "looking at you, artist:z"), V2, age_restricted=True)
    assert rendered.negative == "looking_at_you by=z scr5"
    rendered = render(parse_tags("solo", "sad, scr5"), V1, age_restricted=False)
    assert rendered.positive == "safe, scr800, solo"
    assert rendered.negative == "sad, scr5, explicit, questionable, suggestive, nudity"


def test_wanted_tags_beat_the_models_default_negatives():
    rendered = render(parse_tags("solo, scr5"), V1, age_restricted=True)
    assert rendered.positive == "solo, scr5" and rendered.negative == ""


def test_channel_negatives_beat_wanted_tags():
    rendered = render(parse_tags("solo, nudity"), V1, age_restricted=False)
    assert rendered.positive == "safe, scr800, solo"
    assert "nudity" in rendered.negative


def test_user_negatives_beat_quality_tags():
    assert draw("solo", V2, negative="scr100") == "solo"


def test_unrestricted_render_is_always_safe():
    # apply_channel_policy refuses this first; render still never draws it.
    rendered = render(parse_tags("solo, explicit"), V2, age_restricted=False)
    assert rendered.positive == "safe scr100 solo"
    assert rendered.negative == "scr5 explicit questionable suggestive nudity"


def test_pony_diffusion_defaults_to_safe():
    assert draw("solo", PONY_DIFFUSION) == "safe, solo"
    assert draw("solo, explicit", PONY_DIFFUSION) == "explicit, solo"
    assert draw("solo", PONY_DIFFUSION, negative="safe") == "solo"


def test_tag_count():
    assert render(parse_tags("a, b"), V1, age_restricted=False).tag_count == 4


def test_aliases_apply_to_negatives():
    assert render(parse_tags("solo", "twilight sparkle"), V2, age_restricted=True).negative == (
        "twilight scr5"
    )
    # After aliasing a wanted tag can collide with a negative one: the negative wins.
    assert draw("twilight, solo", V2, negative="twilight sparkle") == "scr100 solo"


# --- properties ------------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, database=None)

VOCABULARY = [
    "twilight sparkle", "Twilight_Sparkle", "twilight", "princess luna", "luna", "unicorn",
    "solo", "looking at you", "looking_at_you", "scr100", "scr800", "scr5", "scr1000", "safe",
    "suggestive", "questionable", "explicit", "nudity", "artist:pierogarts", "by=pierogarts",
    "oc:nebula", "oc=nebula", "art pack:x", "spoiler:s05e01", "é", "ポニー", "Straße", ":3",
    "=d", "x:", "<@123>", "`", "**", "||", "-", "--", "...", "\x00", "\u200b", "ǅ", "ꭰ",
]  # fmt: skip
item = st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=12))
signed = st.builds(lambda sign, text: sign + text, st.sampled_from(["", "-", " - "]), item)
typed = st.builds(
    lambda items, separator: separator.join(items),
    st.lists(signed, max_size=12),
    st.sampled_from([", ", ",", " ", ",,", "\n", " ,\t"]),
)
texts = st.one_of(typed, st.text())
prompts = st.builds(parse_tags, texts, texts)
models = st.sampled_from(MODELS)


@PROPERTY
@given(st.text(), st.text())
def test_parse_never_raises(text, negative):
    assert isinstance(parse_tags(text, negative), TagPrompt)


@PROPERTY
@given(st.text(min_size=1, max_size=50), st.integers(0, 3 * MAX_INPUT_CHARS))
def test_parse_never_raises_on_long_text(chunk, size):
    text = (chunk * (size // len(chunk) + 1))[:size]
    parse_tags(text, text)


@PROPERTY
@given(prompts)
def test_parsed_tags_are_canonical(prompt):
    values = [*prompt.tags, *prompt.artists, *prompt.negatives]
    values += [part for pair in prompt.namespaced for part in pair]
    for value in values:
        assert value and value == value.strip() and "  " not in value
        assert not set(value) & set(",_`\n\t")
        assert unicodedata.normalize("NFKC", value.casefold()) == value
    assert not any(t.startswith("-") for t in [*prompt.tags, *prompt.negatives])
    assert not {r.value for r in Rating} & set(prompt.tags)


@PROPERTY
@given(prompts, models, st.booleans())
def test_render_never_raises_and_writes_lower_case_tags(prompt, model, age_restricted):
    rendered = render(prompt, model, age_restricted=age_restricted)
    assert isinstance(rendered, RenderedPrompt)
    assert rendered.tag_count == len(words(rendered.positive, model))
    for word in words(rendered.positive, model) + words(rendered.negative, model):
        assert word and "," not in word and not re.search("[A-Z]", word)
        assert unicodedata.normalize("NFKC", word.casefold()) == word
        if model.tag_style is TagStyle.SPACE:
            assert " " not in word


@PROPERTY
@given(prompts, models, st.booleans())
def test_negatives_never_leak_into_the_positive(prompt, model, age_restricted):
    rendered = render(prompt, model, age_restricted=age_restricted)
    positive = set(words(rendered.positive, model))
    assert not positive & set(words(rendered.negative, model))


@PROPERTY
@given(prompts, models, st.booleans())
def test_render_parse_render_is_render(prompt, model, age_restricted):
    first = render(prompt, model, age_restricted=age_restricted)
    again = parse_tags(first.positive, first.negative, style=model.tag_style)
    assert render(again, model, age_restricted=age_restricted) == first


@PROPERTY
@given(prompts, models)
def test_reparsing_the_positive_alone_gives_the_same_tags(prompt, model):
    prompt = prompt.model_copy(update={"negatives": ()})
    first = render(prompt, model, age_restricted=True).positive
    again = parse_tags(first, style=model.tag_style)
    assert render(again, model, age_restricted=True).positive == first
