"""Policy on the caption the model will see (ponybot_request/policy.py): ratings outside
age-restricted channels, a server's blocked tags, whatever the punctuation, namespace spelling or
short form. `/pony` runs exactly this (ponybot_request/prompting.py's render_prompt), and so
does every button job."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import UserFacingError
from ponybot_core.config import ModelEntry, load_config
from ponybot_request.options import PonyOptions
from ponybot_request.prompting import render_prompt

SHIPPED = load_config(Path(__file__).resolve().parent.parent / "config.toml")
MODELS = [SHIPPED.model(i) for i in ("pony-diffusion", "v1", "v2")]


def pony(tags: str, model: ModelEntry, *, age_restricted: bool, blocked: tuple[str, ...] = (),
         negative: str = "") -> str:
    """What /pony would send the model, or UserFacingError."""
    options = PonyOptions.parse(SHIPPED, tags=tags, negative=negative, model=model.id)
    rendered, _ = render_prompt(options, model, SHIPPED, age_restricted=age_restricted,
                                blocked_tags=blocked)
    return rendered.positive


# --- ratings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("typed", [
    "explicit", "explicit.", "questionable!", "rating:explicit", "Rating = Explicit", "EXPLICIT",
    "ex-plicit", "e.x.p.l.i.c.i.t", "(explicit)", "explicit_content", "questionable, suggestive",
])  # fmt: skip
def test_a_refused_rating_is_refused_whatever_the_punctuation(typed, model):
    with pytest.raises(UserFacingError, match="needs an age-restricted channel"):
        pony(f"solo, {typed}", model, age_restricted=False)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_a_refused_rating_inside_a_comma_free_prompt_is_refused(model):
    with pytest.raises(UserFacingError, match="`explicit`"):
        pony("pinkie pie anthro explicit portrait", model, age_restricted=False)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_age_restricted_channels_draw_any_rating(model):
    assert "explicit" in pony("solo, rating:explicit", model, age_restricted=True)


def test_negatives_may_name_refused_ratings():
    assert pony("solo", MODELS[1], age_restricted=False, negative="explicit, questionable")


# --- blocked tags ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_a_blocked_character_is_blocked_in_any_models_short_form(model):
    # V1's captions write `twilight sparkle` as `twilight`, so `twilight` is refused everywhere.
    for typed in ["twilight sparkle", "Twilight_Sparkle", "twilight", "twilight sparkle (alicorn)",
                  "twilight-sparkle"]:
        with pytest.raises(UserFacingError, match="Not allowed on this server"):
            pony(f"solo, {typed}", model, age_restricted=True, blocked=("twilight sparkle",))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_a_blocked_artist_is_blocked_in_every_namespace_spelling(model):
    for typed in ["artist:bad artist", "by=bad_artist", "by:bad artist", "Artist = Bad Artist"]:
        with pytest.raises(UserFacingError, match="Not allowed on this server"):
            pony(f"solo, {typed}", model, age_restricted=True, blocked=("artist:bad artist",))


def test_a_blocked_tag_is_blocked_whatever_the_punctuation():
    for typed in ["gore", "GORE!", "g-o-r-e", "semi-gore", "oc:gore"]:
        with pytest.raises(UserFacingError, match="Not allowed on this server"):
            pony(f"solo, {typed}", MODELS[1], age_restricted=True, blocked=("gore",))


def test_the_refusal_names_what_was_found_and_what_is_blocked():
    with pytest.raises(UserFacingError) as error:
        pony("solo, twilight sparkle", MODELS[1], age_restricted=True,
             blocked=("twilight sparkle",))
    assert "`twilight` (blocked: `twilight sparkle`)" in str(error.value)


def test_other_tags_and_negatives_pass_a_block_list():
    blocked = ("gore", "twilight sparkle")
    assert pony("solo, rarity", MODELS[1], age_restricted=True, blocked=blocked,
                negative="gore, twilight sparkle") == "scr800, solo, rarity"


# --- the property ------------------------------------------------------------------------------

REFUSED = ("explicit", "questionable")
punctuation = st.sampled_from(list(".!?-*()[]{}'\"/\\:;=+~^%$#@&|<>`_"))


@st.composite
def spelled(draw: st.DrawFn) -> str:
    """A refused rating as someone might dodge a filter: any case, punctuation anywhere in
    it, a `rating` namespace in any spelling."""
    word = draw(st.sampled_from(REFUSED))
    letters = [c.upper() if draw(st.booleans()) else c for c in word]
    out = "".join(c + "".join(draw(st.lists(punctuation, max_size=2))) for c in letters)
    prefix = draw(st.sampled_from(["", "rating:", "rating=", "Rating: ", "rating_", "-"]))
    return prefix + "".join(draw(st.lists(punctuation, max_size=2))) + out


FILLER = ["solo", "pony", "twilight sparkle", "artist:pierogarts", "oc:nebula", "safe",
          "suggestive", "looking_at_you", "scr800", "unicorn", "pinkie pie anthro portrait"]
tag_lists = st.lists(st.one_of(st.sampled_from(FILLER), spelled()), min_size=1, max_size=8)


# A refused rating's letters with anything but spaces and commas between them.
SPELLED_IN_CAPTION = re.compile("|".join("[^\\s,]*".join(word) for word in REFUSED))


@settings(max_examples=400, deadline=None, database=None)
@given(tag_lists, st.sampled_from([", ", " ", ",", "\n"]), st.sampled_from(MODELS))
def test_no_caption_ever_contains_a_refused_rating_outside_age_restricted_channels(
    tags, separator, model
):
    dodging = any(SPELLED_IN_CAPTION.search(t.lower()) for t in tags)
    try:
        caption = pony(separator.join(tags), model, age_restricted=False)
    except UserFacingError as refusal:
        if "age-restricted" in str(refusal):
            assert dodging, "only a refused rating is refused for the channel"
        return
    assert not SPELLED_IN_CAPTION.search(caption.lower()), caption
