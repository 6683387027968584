"""Pony Diffusion V4, V5 and V6 XL as their cards say (config.toml's [V4], [V5], [V6]): the
exact caption each writes in both kinds of channel, the rating vocabulary each speaks and what
a channel that is not age-restricted refuses in it, the card's quality prefix and a server
turning it off, each family's own sizes and hires, and the fixes to the 2022 models that came
with them (V2 truncates and shortens the princesses, pony-diffusion runs its card's 50 steps,
a truncating model's long negative prompt is cut, not chunked). Every job here is made the way
the bot makes it (`build_job`), so the policy that guards each caption is the one that runs."""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ponybot_core.config import (
    Architecture,
    Config,
    Dimensions,
    ModelEntry,
    Size,
    load_config,
)
from ponybot_core.image_parameters import A1111Parameters
from ponybot_core.job import Job, UploadedImage
from ponybot_request import clip_tokens, policy
from ponybot_request.errors import UserFacingError
from ponybot_request.jobs import (
    Channel,
    DrawThisRequest,
    FromResult,
    PonyRequest,
    Requester,
    build_job,
    hires_pass,
)
from ponybot_request.options import PonyOptions
from ponybot_request.tags import caption_tags, parse_tags, rating_of, render, skeleton

CONFIG = load_config(Path(__file__).resolve().parent.parent / "config.toml")
V4, V5, V6_XL = CONFIG.model("v4"), CONFIG.model("v5"), CONFIG.model("v6-xl")
BY = Requester(user_id=5, application_id=1, interaction_id=2, interaction_token="tok")
V6_PREFIX = "score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up"


def here(*, age_restricted: bool, quality_prefix: bool = True) -> Channel:
    return Channel(guild_id=3, channel_id=4, age_restricted=age_restricted,
                   quality_prefix=quality_prefix)


def pony(tags: str, model: ModelEntry, *, age_restricted: bool, negative: str = "",
         quality_prefix: bool = True, size: str | None = None, hires: bool = False,
         image: UploadedImage | None = None) -> Job:
    options = PonyOptions.parse(CONFIG, tags=tags, negative=negative or None, model=model.id,
                                size=size)
    request = PonyRequest(by=BY, options=options, hires=hires, image=image)
    return build_job(request, here(age_restricted=age_restricted,
                                   quality_prefix=quality_prefix), None, config=CONFIG).job


def refusal(tags: str, model: ModelEntry) -> str:
    with pytest.raises(UserFacingError) as caught:
        pony(tags, model, age_restricted=False)
    return str(caught.value)


# --- the cards' templates, golden ---------------------------------------------------------------

TYPED = "a unicorn mare reading in a library, twilight sparkle, source pony, solo"


@pytest.mark.parametrize(("model", "age_restricted", "caption", "negative"), [
    # [V4]: derpibooru tags, `safe` asks for SFW, a negative prompt suppresses nudity.
    (V4, False, "safe, a unicorn mare reading in a library, twilight sparkle, source pony, solo",
     "suggestive, questionable, explicit, nudity"),
    (V4, True, "a unicorn mare reading in a library, twilight sparkle, source pony, solo", ""),
    # [V5]: "score_9, just describe what you want, tag1, tag2", ratings score_*.
    (V5, False, "score_9, score_safe, a unicorn mare reading in a library, twilight sparkle, "
                "source_pony, solo", "score_questionable, score_explicit, nudity"),
    (V5, True, "score_9, a unicorn mare reading in a library, twilight sparkle, source_pony, "
               "solo", ""),
    # [V6]: "score_9, score_8_up, ..., score_4_up, just describe what you want, tag1, tag2",
    # ratings rating_*, no negative prompt needed.
    (V6_XL, False, f"{V6_PREFIX}, rating_safe, a unicorn mare reading in a library, "
                   "twilight sparkle, source_pony, solo",
     "rating_questionable, rating_explicit, nudity"),
    (V6_XL, True, f"{V6_PREFIX}, a unicorn mare reading in a library, twilight sparkle, "
                  "source_pony, solo", ""),
])  # fmt: skip
def test_each_card_template_is_the_caption_in_both_kinds_of_channel(model, age_restricted,
                                                                    caption, negative):
    job = pony(TYPED, model, age_restricted=age_restricted)
    assert (job.prompt, job.negative_prompt) == (caption, negative)


def test_a_server_that_turns_the_quality_prefix_off_gets_only_what_was_typed():
    job = pony("twilight sparkle, solo", V6_XL, age_restricted=False, quality_prefix=False)
    assert job.prompt == "rating_safe, twilight sparkle, solo"
    job = pony("twilight sparkle, solo", V5, age_restricted=True, quality_prefix=False)
    assert job.prompt == "twilight sparkle, solo"


def test_a_prefix_tag_typed_again_or_kept_out_is_not_written_twice_or_at_all():
    assert pony("score_9, solo", V6_XL, age_restricted=True).prompt == f"{V6_PREFIX}, solo"
    job = pony("solo", V6_XL, age_restricted=True, negative="score_4_up")
    assert job.prompt == "score_9, score_8_up, score_7_up, score_6_up, score_5_up, solo"
    assert job.negative_prompt == "score_4_up"


def test_the_cards_keywords_are_written_as_the_cards_spell_them_however_typed():
    for typed in ("source pony", "source_pony", "Source_Pony", "SOURCE PONY"):
        assert pony(typed, V6_XL, age_restricted=True).prompt == f"{V6_PREFIX}, source_pony"
    # A model whose card has no such keyword keeps the derpibooru spelling.
    assert pony("source_pony", V4, age_restricted=True).prompt == "source pony"


def test_derpibooru_namespaces_are_written_as_typed_for_the_new_models():
    # The cards say nothing of namespaces (unverified): nothing is rewritten, unlike V1's by=.
    job = pony("artist:pierogarts, oc:nebula, by=someone", V6_XL, age_restricted=True)
    assert job.prompt == f"{V6_PREFIX}, artist:pierogarts, oc:nebula, artist:someone"


# --- ratings in each model's words --------------------------------------------------------------


@pytest.mark.parametrize(("model", "safe", "explicit"), [
    (V4, "safe", "explicit"),
    (V5, "score_safe", "score_explicit"),
    (V6_XL, "rating_safe", "rating_explicit"),
])  # fmt: skip
@pytest.mark.parametrize("typed_safe", ["safe", "rating_safe", "score_safe", "Rating: Safe!"])
def test_a_typed_rating_is_written_in_the_models_vocabulary(model, safe, explicit, typed_safe):
    job = pony(f"solo, {typed_safe}", model, age_restricted=True)
    assert caption_tags(job.prompt, model.caption)[-1] == safe
    for typed_explicit in ("explicit", "rating_explicit", "score_explicit", "rating:explicit"):
        job = pony(f"solo, {typed_explicit}", model, age_restricted=True)
        assert caption_tags(job.prompt, model.caption)[-1] == explicit


@pytest.mark.parametrize("model", [V4, V5, V6_XL], ids=lambda m: m.id)
@pytest.mark.parametrize("typed", [
    "explicit", "questionable", "rating_explicit", "rating_questionable", "score_explicit",
    "score_questionable", "rating:explicit", "Explicit!", "e-x-p-l-i-c-i-t",
    "rаting_explicit",  # a Cyrillic а
    "scоre_questionable",  # a Cyrillic о
    "explıcıt",  # dotless i
    "ratingexplicit", "rating explicit",
])  # fmt: skip
def test_every_vocabularys_explicit_and_questionable_is_refused_outside_age_restricted(model,
                                                                                       typed):
    message = refusal(f"solo, {typed}", model)
    assert "needs an age-restricted channel" in message
    assert f"Use `{model.caption.rating_tags.get('safe', 'safe')}` here." in message


# --- look-alike letters: read as the Latin ones (ponybot_request/tags.py's table) --------------

# Latin, Cyrillic and Greek "<letter> WITH <mark>" (a hook, a stroke, a descender...).
_MARKED = re.compile(r"((?:LATIN|CYRILLIC|GREEK) (?:SMALL |CAPITAL )?LETTER [A-Z -]+?) WITH .+")
_NAMED = {unicodedata.name(chr(cp), ""): chr(cp) for cp in range(0x20, 0x20000)}


@functools.cache
def marked_letters() -> dict[str, str]:
    """Every marked letter whose unmarked letter reads as a Latin one -> that Latin letter;
    digraphs (`ǅ`, which NFKC spells out as two letters) left out."""
    found = {}
    for name, char in _NAMED.items():
        match = _MARKED.fullmatch(name)
        base = _NAMED.get(match.group(1)) if match else None
        if base is None or len(unicodedata.normalize("NFKC", char)) > 1:
            continue
        latin = skeleton(base)
        if len(latin) == 1 and latin.isascii() and latin.isalpha():
            found[char] = latin
    return found


# Seen by the red team (Cyrillic ha with descender) and its relatives, and one of each script
# whose TR39 confusables the table takes (Lisu, Cherokee, Coptic, Armenian, Abkhasian che).
SEEN = {"ҳ": "x", "Ҳ": "x", "ӽ": "x", "Ӽ": "x", "ӿ": "x", "Ӿ": "x", "ꓰ": "e", "Ꭼ": "e", "ҽ": "e",
        "ⲭ": "x", "ⲣ": "p", "օ": "o", "ս": "u", "ꓲ": "l", "ł": "l", "ꝗ": "q", "ƀ": "b"}


def test_a_letter_with_a_mark_reads_as_the_letter_it_marks() -> None:
    marked = marked_letters()
    assert len(marked) > 500  # the rule found letters: Latin alone has hundreds
    misread = {char: skeleton(char) for char, latin in marked.items() if skeleton(char) != latin}
    assert misread == {}


@functools.cache
def lookalikes(letters: str) -> dict[str, set[str]]:
    """Letter -> everything that reads as it: what the table and NFKC make of every code point,
    with the marked letters and those seen, whatever the table says of them."""
    found: dict[str, set[str]] = {letter: set() for letter in letters}
    for char, latin in (*((chr(cp), skeleton(chr(cp))) for cp in range(0x80, 0x20000)),
                        *marked_letters().items(), *SEEN.items()):
        if latin in found:
            found[latin].add(char)
    return found


@pytest.mark.parametrize("model", CONFIG.models, ids=lambda m: m.id)
def test_every_lookalike_of_every_letter_of_explicit_and_questionable_is_refused_outside_age_restricted(  # noqa: E501
        model: ModelEntry) -> None:
    passed = []
    for word in ("explicit", "questionable"):
        written = model.caption.rating_tags.get(word, word)  # `rating_explicit` for V6 XL
        for i, letter in enumerate(word):
            for alike in sorted(lookalikes("explicitquestionable")[letter]):
                spoofed = word[:i] + alike + word[i + 1:]
                for typed in {spoofed, written.replace(word, spoofed)}:
                    try:
                        policy.apply(f"solo, {typed}", "", model=model, config=CONFIG,
                                     age_restricted=False)
                    except UserFacingError:
                        continue
                    passed.append(typed)
    assert passed == []


def test_explicit_typed_for_v6_xl_in_a_channel_that_is_not_age_restricted_is_refused():
    assert refusal("twilight sparkle, explicit", V6_XL) == (
        "`explicit` (as `rating_explicit`) needs an age-restricted channel, and this channel "
        "is not age-restricted. Use `rating_safe` here.")


def test_rating_explicit_typed_for_v4_is_read_as_explicit_and_refused():
    assert refusal("twilight sparkle, rating_explicit", V4).startswith(
        "`explicit` needs an age-restricted channel")


def test_suggestive_becomes_the_models_safe_where_the_channel_is_not_age_restricted():
    job = pony("solo, suggestive", V6_XL, age_restricted=False)
    assert job.prompt == f"{V6_PREFIX}, solo, rating_safe"


def test_a_safe_in_any_vocabulary_is_kept_out_of_the_negative_where_safe_is_forced():
    for typed in ("safe", "rating_safe", "score_safe"):
        job = pony("solo", V6_XL, age_restricted=False, negative=typed)
        assert rating_of(job.prompt.split(", ")[6]) is not None
        assert "safe" not in job.negative_prompt


def test_a_caption_drawn_without_rating_gets_the_models_safe_after_the_prefix_when_redrawn():
    earlier = pony("twilight sparkle", V6_XL, age_restricted=True)
    assert earlier.prompt == f"{V6_PREFIX}, twilight sparkle"
    redrawn = build_job(FromResult(kind="reroll", by=BY, source=earlier),
                        here(age_restricted=False), None, config=CONFIG).job
    assert redrawn.prompt == f"{V6_PREFIX}, rating_safe, twilight sparkle"
    assert redrawn.negative_prompt == "rating_questionable, rating_explicit, nudity"


def test_a_v6_picture_drawn_explicit_is_not_redrawn_where_the_channel_is_not_age_restricted():
    earlier = pony("twilight sparkle, explicit", V6_XL, age_restricted=True)
    with pytest.raises(UserFacingError, match="can only be re-drawn in one"):
        build_job(FromResult(kind="vary", by=BY, source=earlier, index=0),
                  here(age_restricted=False), None, config=CONFIG)


def test_sixty_tags_with_the_prefix_still_redraw():
    # The prefix is the bot's, like the rating: not counted against `limits.max_tags`.
    typed = ", ".join(f"tag{i}" for i in range(CONFIG.limits.max_tags))
    earlier = pony(typed, V6_XL, age_restricted=False)
    build_job(FromResult(kind="reroll", by=BY, source=earlier), here(age_restricted=False),
              None, config=CONFIG)


VOCABULARY = ["safe", "suggestive", "questionable", "explicit", "rating_safe",
              "rating_questionable", "rating_explicit", "score_safe", "score_questionable",
              "score_explicit", "score_9", "source_pony", "twilight sparkle", "solo", "nudity"]


@settings(max_examples=150, deadline=None, database=None)
@given(tags=st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=6),
       model=st.sampled_from([V4, V5, V6_XL]), prefix=st.booleans())
def test_whatever_is_typed_a_channel_that_is_not_age_restricted_draws_one_safe_rating(
        tags, model, prefix):
    try:
        job = pony(", ".join(tags), model, age_restricted=False, quality_prefix=prefix)
    except UserFacingError as exc:
        refused = any(word in t for t in tags for word in ("explicit", "questionable"))
        only_ratings = all(rating_of(t) is not None for t in tags)
        assert refused or only_ratings, exc
        return
    ratings = [t for t in caption_tags(job.prompt, model.caption) if rating_of(t) is not None]
    assert ratings == [model.caption.rating_tags.get("safe", "safe")]


# --- sizes and hires: each family's own ---------------------------------------------------------


@pytest.mark.parametrize(("model", "square", "portrait", "landscape"), [
    (CONFIG.model("v1"), (512, 512), (512, 768), (768, 512)),  # config.toml's [sizes]
    (V4, (512, 512), (512, 768), (768, 512)),
    (V5, (768, 768), (768, 1152), (1152, 768)),
    (V6_XL, (1024, 1024), (832, 1216), (1216, 832)),  # SDXL's buckets
])  # fmt: skip
def test_square_portrait_and_landscape_are_the_models_own_sizes(model, square, portrait,
                                                               landscape):
    for size, wanted in (("square", square), ("portrait", portrait), ("landscape", landscape)):
        job = pony("solo", model, age_restricted=True, size=size)
        assert (job.width, job.height) == wanted


def test_an_entrys_own_sizes_override_its_familys():
    entry = V6_XL.model_copy(update={"sizes": {Size.PORTRAIT: Dimensions(width=896,
                                                                          height=1152)}})
    sizes = CONFIG.model_sizes(entry)
    assert (sizes[Size.PORTRAIT].width, sizes[Size.PORTRAIT].height) == (896, 1152)
    assert (sizes[Size.SQUARE].width, sizes[Size.SQUARE].height) == (1024, 1024)


@pytest.mark.parametrize(("model", "size", "final"), [
    (CONFIG.model("v1"), "square", (1024, 1024)),
    (V5, "square", (1536, 1536)),
    (V6_XL, "square", (2048, 2048)),  # SDXL's 1024 px doubles: its own max side, 2048
    (V6_XL, "portrait", (1400, 2048)),  # 832x1216 grows until its long side is 2048
])  # fmt: skip
def test_hires_is_planned_from_the_models_own_size_and_largest_side(model, size, final):
    job = pony("solo", model, age_restricted=True, size=size, hires=True)
    assert job.hires is not None and (job.hires.width, job.hires.height) == final


def test_an_entrys_hires_max_side_overrides_its_familys():
    entry = V6_XL.model_copy(update={"hires_max_side": 1536})
    assert hires_pass(CONFIG, 1024, 1024, 25, entry).width == 1536


def test_a_picture_drawn_at_an_sdxl_bucket_is_drawn_again_at_it():
    parameters = A1111Parameters(prompt=f"{V6_PREFIX}, solo", width=832, height=1216, seed=1,
                                 model=V6_XL.name)
    job = build_job(DrawThisRequest(by=BY, parameters=parameters), here(age_restricted=True),
                    None, config=CONFIG).job
    assert (job.width, job.height) == (832, 1216)


def test_an_uploaded_picture_is_drawn_at_about_the_models_own_pixel_count():
    image = UploadedImage(url="https://cdn.discordapp.com/x.png", filename="x.png",
                          content_type="image/png", width=2000, height=2000, size=1000)
    job = pony("solo", V6_XL, age_restricted=True, image=image)
    assert (job.width, job.height) == (1024, 1024)


# --- per-model defaults -------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "sampler", "steps", "cfg", "clip_skip", "base"), [
    (V4, "ddim", 25, 7.5, 1, Architecture.SD1),  # [V4] names none: [defaults]
    (V5, "euler_a", 25, 7.0, 1, Architecture.SD2),
    (V6_XL, "euler_a", 25, 7.0, 2, Architecture.SDXL),  # [V6] Euler a, 25 steps, clip skip 2
    (CONFIG.model("pony-diffusion"), "ddim", 50, 7.5, 1, Architecture.AUTO),  # its card: 50
])  # fmt: skip
def test_each_model_draws_with_its_own_sampler_steps_and_cfg(model, sampler, steps, cfg,
                                                            clip_skip, base):
    job = pony("solo", model, age_restricted=True)
    assert (job.sampler.value, job.steps, job.cfg) == (sampler, steps, cfg)
    assert (model.clip_skip, model.base) == (clip_skip, base)


def test_the_new_models_are_not_the_default_and_their_files_are_the_published_names():
    assert CONFIG.default_model not in {"v4", "v5", "v6-xl"}
    assert V6_XL.path.name == "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"
    assert V6_XL.download_url == "https://civitai.com/models/257749?modelVersionId=290640"
    assert V5.upcast_attention is True  # [V5]: --xformers or --no-half


# --- the 2022 models, while here ----------------------------------------------------------------

LONG_NEGATIVE = ", ".join(f"bad thing {i}" for i in range(40))


def test_a_truncating_models_long_negative_is_cut_to_clips_window_not_chunked():
    v1 = CONFIG.model("v1")
    job = pony("solo", v1, age_restricted=False, negative=LONG_NEGATIVE)
    assert clip_tokens.count(job.negative_prompt) <= 75
    # The channel's negatives, which the bot adds, are what stays; the user's tail goes.
    assert job.negative_prompt.startswith("suggestive, questionable, explicit, nudity, ")
    assert "bad thing 0" in job.negative_prompt and "bad thing 39" not in job.negative_prompt
    prompt = parse_tags("solo", LONG_NEGATIVE, profile=v1.caption)
    notes = render(prompt, v1, age_restricted=False).notes
    assert any("of the negative prompt: past the 75 tokens" in n for n in notes)


def test_a_chunking_models_long_negative_is_kept_whole():
    job = pony("solo", V6_XL, age_restricted=True, negative=LONG_NEGATIVE)
    assert "bad thing 39" in job.negative_prompt


def test_v2_writes_the_princesses_short_as_lun_s_notes_config_does():
    job = pony("princess luna, princess cadance, solo", CONFIG.model("v2"), age_restricted=True)
    assert job.prompt == "scr800 luna cadance solo"


def test_a_config_with_an_unknown_rating_key_fails_loudly(tmp_path):
    from ponybot_core.config import CaptionProfile

    with pytest.raises(ValueError, match="rating_tags"):
        CaptionProfile(rating_tags={"nsfw": "rating_explicit"})
    assert isinstance(CONFIG, Config)


# --- /model info --------------------------------------------------------------------------------


def info(entry: ModelEntry, *, quality_prefix: bool = True) -> list[str]:
    from bot.guild_settings import GuildSettings
    from cogs.models import _describe

    return _describe(entry, CONFIG, GuildSettings(quality_prefix=quality_prefix), [],
                     is_default=False, in_guild=True, age_restricted=False, problem=None)


def test_model_info_shows_v6_xls_template_ratings_sizes_clip_skip_and_evidence():
    lines = info(V6_XL)
    assert f"Template: `{V6_PREFIX}, ` then your tags" in lines
    assert ("Ratings in the model's words: `safe→rating_safe`, "
            "`questionable→rating_questionable`, `explicit→rating_explicit`") in lines
    assert "Defaults: sampler euler_a · 25 steps · cfg 7 · clip skip 2" in lines
    assert ("Sizes (SDXL): square 1024×1024 · portrait 832×1216 · landscape 1216×832 · "
            "hires up to 2048 px") in lines
    assert any("civitai.com/models/257749" in line for line in lines)
    assert f"→ the model sees `{V6_PREFIX}, rating_safe, a unicorn mare reading a book in a " \
           "library, twilight sparkle, source_pony, solo`" in lines


def test_model_info_says_when_the_server_turned_the_template_off():
    lines = info(V6_XL, quality_prefix=False)
    assert f"Template: the card's `{V6_PREFIX}` is off on this server" in lines
    assert any(line.startswith("→ the model sees `rating_safe, a unicorn") for line in lines)


def test_a_sentence_typed_without_commas_stays_one_piece_for_the_natural_language_models():
    sentence = "a unicorn mare by=the window reading a book"
    assert pony(sentence, V6_XL, age_restricted=True).prompt == (
        f"{V6_PREFIX}, a unicorn mare by=the window reading a book")
    # For a tag-only model the same text looks like a space-separated caption: one tag a word.
    assert pony(sentence, V4, age_restricted=True).prompt.startswith("a, unicorn, mare, ")
