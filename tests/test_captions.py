"""Golden captions: each shipped model is sent what its training captions looked like.

V1: derpibooru tag lists with scores go through the V1 run's own caption builder
(tests/translunar_reference.py, transcribed from LunNova/translunar-diffusion @ 06e6206) and
through /pony's parser and renderer; both give the same tags (order aside: training shuffled
half the captions and sorted the rest by an unpublished key). V2 reproduces the example in
Lun's post (LunNova/Blog @ 86d6c66) from the image's derpibooru tags. pony-diffusion passes its
model card's prompt through.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ponybot_core.config import ModelEntry, load_config
from ponybot_request.tags import caption_tags, parse_tags, render
from tests.translunar_reference import METADATA_PARAMS, training_caption

SHIPPED = load_config(Path(__file__).resolve().parent.parent / "config.toml")
V1_MODELS = [SHIPPED.model("v1"), SHIPPED.model("v1-287k")]
V1 = V1_MODELS[0]
V2 = SHIPPED.model("v2")
PONY_DIFFUSION = SHIPPED.model("pony-diffusion")


def score_tag(score: int) -> str:
    """The bucket a user types for an image of this score (what training appended)."""
    return next(f"scr{n}" for n in METADATA_PARAMS["score_tags"] if score >= n)


def bot_caption(tags: list[str], score: int, model: ModelEntry) -> list[str]:
    """The caption /pony sends when a user types the image's tags and its score bucket."""
    typed = ", ".join([*tags, score_tag(score)])
    rendered = render(parse_tags(typed, profile=model.caption), model, age_restricted=True)
    return caption_tags(rendered.positive, model.caption)


def trained_caption(tags: list[str], score: int) -> list[str]:
    caption = training_caption(tags, score, random.Random(0))
    assert caption is not None, "the training kept this image"
    return caption.split(", ")


# --- V1 -----------------------------------------------------------------------------------------

GOLDEN = {
    "plain tags and an artist": (
        ["twilight sparkle", "unicorn", "solo", "safe", "artist:pierogarts"], 900),
    "namespaces, and tags removed from captions": (
        ["oc:nebula", "oc", "oc only", "pegasus", "solo female", "high res", "suggestive",
         "artist:somepony", "commission"], 350),
    "short forms inside a tag, let in by the duo bonus": (
        ["twilight sparkle (alicorn)", "applejack's hat", "princess luna", "duo", "safe"], 150),
    "apostrophes and every namespace": (
        ["derpy hooves", "soarin'", "starlight glimmer", "spoiler:s05e01", "safe",
         "artist:a:b"], 1700),
    "two names shortened to the same tag": (
        ["pinkie pie", "maud pie", "pinkie", "solo", "safe", "edit"], 620),
}


@pytest.mark.parametrize("model", V1_MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("case", GOLDEN.values(), ids=GOLDEN.keys())
def test_v1_caption_is_the_training_caption_as_a_set(case, model):
    tags, score = case
    assert set(bot_caption(tags, score, model)) == set(trained_caption(tags, score))


def test_v1_golden_cases_cover_what_the_issue_names():
    by_equals = set(bot_caption(*GOLDEN["plain tags and an artist"], V1))
    assert {"twilight", "by=pierogarts", "scr800"} <= by_equals
    namespaced = set(bot_caption(*GOLDEN["namespaces, and tags removed from captions"], V1))
    assert {"oc=nebula", "by=somepony"} <= namespaced and "oc" not in namespaced
    inside = set(bot_caption(*GOLDEN["short forms inside a tag, let in by the duo bonus"], V1))
    assert {"twilight (alicorn)", "aj's hat", "luna", "scr150"} <= inside


# Derpibooru-like tags: characters V1 shortened (alone and inside longer tags), namespaces,
# ratings it kept, tags it removed from captions, and ordinary tags.
DERPIBOORU_TAGS = [
    "twilight sparkle", "twilight sparkle (alicorn)", "rainbow dash", "rainbow dash's cutie mark",
    "applejack", "pinkie pie", "princess luna", "princess celestia", "nightmare moon",
    "starlight glimmer", "s5 starlight", "sunset shimmer", "derpy hooves", "soarin'",
    "sweetie belle", "apple bloom", "big macintosh", "maud pie", "lyra heartstrings",
    "artist:pierogarts", "artist:some pony", "oc:nebula", "oc:kindle", "spoiler:s05e01",
    "solo", "duo", "pony", "mare", "unicorn", "pegasus", "cute", "smiling",
    "looking at you", "oc", "oc only", "high res", "absurd res", "solo female", "commission",
    "shipping", "edit", "monochrome", "sketch", "robot", "pride flag",
]  # fmt: skip


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(DERPIBOORU_TAGS), min_size=1, max_size=15, unique=True),
       st.sampled_from([[], ["safe"], ["suggestive"]]),  # derpibooru gives one rating at most
       st.integers(50, 5000))
def test_v1_caption_matches_the_training_code_for_any_kept_image(tags, rating, score):
    tags = [*tags, *rating]
    caption = training_caption(tags, score, random.Random(score))
    if caption is None:
        return  # training left the image out: nothing to compare
    assert set(bot_caption(tags, score, V1)) == set(caption.split(", "))


# --- V2 -----------------------------------------------------------------------------------------

V2_EXAMPLE = (
    "pony s5_starlight unicorn glimmer this_will_end_in_communism scr100 bust mare portrait "
    "by=pierogarts female safe looking_at_you solo"
)
# The example image's derpibooru tags, in the example's order (`glimmer` is Starlight Glimmer).
V2_EXAMPLE_TAGS = (
    "pony, s5 starlight, unicorn, starlight glimmer, this will end in communism, scr100, bust, "
    "mare, portrait, artist:pierogarts, female, safe, looking at you, solo"
)


@pytest.mark.parametrize("age_restricted", [True, False])
def test_v2_reproduces_its_seed_example_from_the_derpibooru_tags(age_restricted):
    prompt = parse_tags(V2_EXAMPLE_TAGS, profile=V2.caption)
    assert render(prompt, V2, age_restricted=age_restricted).positive == V2_EXAMPLE


def test_v2_example_pasted_as_is_reaches_v2_unchanged():
    prompt = parse_tags(V2_EXAMPLE, profile=V2.caption)
    assert render(prompt, V2, age_restricted=True).positive == V2_EXAMPLE


# --- pony-diffusion ---------------------------------------------------------------------------

# AstraliteHeart/pony-diffusion's model card, its one example prompt.
CARD_PROMPT = (
    "pinkie pie anthro portrait wedding dress veil intricate highly detailed digital painting "
    "artstation concept art smooth sharp focus illustration Unreal Engine 5 8K"
)


def test_pony_diffusion_passes_the_cards_prompt_through():
    prompt = parse_tags(CARD_PROMPT, profile=PONY_DIFFUSION.caption)
    rendered = render(prompt, PONY_DIFFUSION, age_restricted=True)
    # Lower case only, which is what CLIP's tokenizer reads anyway.
    assert rendered.positive == CARD_PROMPT.lower()
    assert rendered.negative == "" and rendered.notes == ()
    # Outside age-restricted channels the rating is added in front; the rest is untouched.
    sfw = render(prompt, PONY_DIFFUSION, age_restricted=False)
    assert sfw.positive == "safe, " + CARD_PROMPT.lower()
