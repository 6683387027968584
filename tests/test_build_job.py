"""One way to build a job (ponybot_request/jobs.py): every entry point calls `build_job`, nothing
else makes a Job or draws a seed, and whatever the entry point, the caption it queues in a
channel that is not age-restricted is one such a channel draws: rated `safe`, nothing explicit
or questionable, the model's channel negatives in the negative prompt, the server's blocked
tags refused. Hypothesis generates the tag lists, ratings in every spelling among them."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ponybot_core.config import (
    Config,
    LoadedConfig,
    ModelEntry,
    Secrets,
    UpscalerEntry,
    load_config,
)
from ponybot_core.image_parameters import A1111Parameters
from ponybot_core.job import Job, JobKind, UploadedImage
from ponybot_request import policy
from ponybot_request.drawable import for_draw_this
from ponybot_request.errors import UserFacingError
from ponybot_request.jobs import (
    Built,
    Channel,
    DrawThisRequest,
    EditRequest,
    FromResult,
    PonyRequest,
    Request,
    Requester,
    UpscaleRequest,
    build_job,
)
from ponybot_request.options import PonyOptions
from ponybot_request.tags import Rating, caption_tags, config_tag, rating_of, squash, write_tag

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = load_config(ROOT / "config.toml")
# With an upscaler, so that U and `upscale` build jobs instead of being refused for want of one.
CONFIG = Config.model_validate({**SHIPPED.model_dump(), "upscalers": [
    UpscalerEntry(id="x4", name="x4", path=Path("x4.pth")).model_dump()]})
MODELS = [CONFIG.model(i) for i in ("pony-diffusion", "v1", "v2", "v4", "v5", "v6-xl")]
BY = Requester(user_id=5, application_id=1, interaction_id=2, interaction_token="tok")
GUILD, CHANNEL = 3, 4
BLOCKED = "balloons"


def channel(*, age_restricted: bool = False, blocked: tuple[str, ...] = ()) -> Channel:
    return Channel(guild_id=GUILD, channel_id=CHANNEL, age_restricted=age_restricted,
                   blocked_tags=blocked)


def earlier_job(caption: str, model: ModelEntry, negative: str = "") -> Job:
    """A job drawn earlier in this channel (perhaps while it was age-restricted)."""
    return Job(application_id=1, interaction_id=9, guild_id=GUILD, channel_id=CHANNEL,
               user_id=BY.user_id, model_id=model.id, tags=caption, prompt=caption,
               negative_prompt=negative, seed=7, steps=25, cfg=7.0,
               sampler=CONFIG.defaults.sampler, width=512, height=512, count=2)


def cli_job(text: str, model: ModelEntry, here: Channel) -> Job:
    """`ponybot draw` (ponybot_cli/draw.py), which knows only `--nsfw` of channels."""
    from ponybot_cli.draw import job_for

    args = argparse.Namespace(tags=text, negative=None, seed=None, steps=None, cfg=None,
                              count=None, size=None, model=model.id, upscale=False,
                              nsfw=here.age_restricted)
    settings = LoadedConfig(config=CONFIG, secrets=Secrets(), path=ROOT / "config.toml")
    return job_for(settings, args)[0]


# Each entry point as the request it makes from `text`, what the user typed or what an earlier
# caption said (the Parameters menu reads a picture's; a button re-uses its job's).
EntryPoint = Callable[[str, ModelEntry], Request]
ENTRY_POINTS: dict[str, EntryPoint] = {
    "/pony": lambda text, model: PonyRequest(
        by=BY, options=PonyOptions.parse(CONFIG, tags=text, model=model.id)),
    "🔁 re-roll": lambda text, model: FromResult(kind="reroll", by=BY,
                                                source=earlier_job(text, model)),
    "U1": lambda text, model: FromResult(kind="upscale", by=BY, source=earlier_job(text, model),
                                         index=0),
    "V2": lambda text, model: FromResult(kind="vary", by=BY, source=earlier_job(text, model),
                                         index=1),
    "⬆️ hires": lambda text, model: FromResult(kind="hires", by=BY,
                                              source=earlier_job(text, model)),
    "✏️ edit under a result": lambda text, model: EditRequest(
        by=BY, source=earlier_job("pony", model), form=PonyOptions.parse(CONFIG, tags=text)),
    "✏️ edit of a queued job": lambda text, model: EditRequest(
        by=BY, source=earlier_job("pony", model), form=PonyOptions.parse(CONFIG, tags=text),
        in_place=True),
    "Draw this": lambda text, model: DrawThisRequest(
        by=BY, parameters=A1111Parameters(prompt=text, negative_prompt="lowres",
                                          model=model.name)),
}
ALL_ENTRY_POINTS = [*ENTRY_POINTS, "ponybot draw"]


def job_from(entry_point: str, text: str, model: ModelEntry, here: Channel) -> Job:
    if entry_point == "ponybot draw":
        return cli_job(text, model, here)
    request = ENTRY_POINTS[entry_point](text, model)
    return build_job(request, here, None, config=CONFIG).job


# --- what the policy promises ------------------------------------------------------------------

REFUSED = ("explicit", "questionable")
# A refused rating's letters with anything but spaces and commas between them.
SPELLED_REFUSED = re.compile("|".join("[^\\s,]*".join(word) for word in REFUSED))


def assert_for_all_ages(job: Job, model: ModelEntry, blocked: tuple[str, ...]) -> None:
    """The caption is one a channel that is not age-restricted draws (module docstring)."""
    profile = model.caption
    tags = caption_tags(job.prompt, profile)
    ratings = [rating_of(t) for t in tags]
    assert Rating.SAFE in ratings, job.prompt
    assert set(ratings) <= {None, Rating.SAFE}, job.prompt
    assert not SPELLED_REFUSED.search(job.prompt.lower()), job.prompt
    written = {squash(t) for t in tags}
    negatives = {squash(t) for t in caption_tags(job.negative_prompt, profile)}
    for tag in profile.sfw_negative_tags:
        spelled = squash(write_tag(config_tag(tag), profile))
        assert spelled in negatives, (tag, job.negative_prompt)
        assert spelled not in written or rating_of(tag) is not None, (tag, job.prompt)
    for tag in blocked:
        assert squash(tag) not in written, job.prompt
    # Whatever separates the caption's tags (a picture's `a,b` on a space-separated model): no
    # tag spells one of the channel's negatives as a word or a run of words.
    pieces = re.split(r"[\s,]+" if profile.splits_on_spaces else ",", job.prompt)
    for tag in profile.sfw_negative_tags:
        assert not any(spells(piece, tag) for piece in pieces), (tag, job.prompt)
    assert not any(rating_of(t) is Rating.SAFE for t in re.split(r"[\s,]+", job.negative_prompt)
                   if t), job.negative_prompt


def spells(text: str, tag: str) -> bool:
    """`text` has `tag`'s letters as one of its words or a run of its words (`ca_sual-nudity`
    spells `nudity`; `unsuggestive` does not spell `suggestive`)."""
    words, letters = re.findall(r"[^\W_]+", text.casefold()), squash(tag)
    return any("".join(words[i:j]) == letters
               for i in range(len(words)) for j in range(i + 1, len(words) + 1))


# --- the property ------------------------------------------------------------------------------

punctuation = st.sampled_from(list(".!?-*()[]{}'\"/\\:;=+~^%$#@&|<>`_"))


@st.composite
def spelled(draw: st.DrawFn, words: tuple[str, ...]) -> str:
    """A rating (or a channel negative) as someone might type it or a picture carry it: any
    case, punctuation in and around it, a `rating` namespace in any spelling."""
    word = draw(st.sampled_from(words))
    letters = [c.upper() if draw(st.booleans()) else c for c in word]
    out = "".join(c + "".join(draw(st.lists(punctuation, max_size=1))) for c in letters)
    prefix = draw(st.sampled_from(["", "rating:", "rating=", "Rating: ", "rating_", "-"]))
    return prefix + out + "".join(draw(st.lists(punctuation, max_size=2)))


FILLER = ["solo", "pony", "twilight sparkle", "artist:pierogarts", "oc:nebula", "looking_at_you",
          "scr800", "unicorn", "pinkie pie", BLOCKED, "safe", "suggestive", "nudity",
          "rating:suggestive", "Rating: Explicit"]
tag_lists = st.lists(
    st.one_of(st.sampled_from(FILLER),
              spelled(("safe", "suggestive", "questionable", "explicit", "nudity"))),
    min_size=1, max_size=8)


@settings(max_examples=500, deadline=None, database=None)
@given(st.sampled_from(ALL_ENTRY_POINTS), tag_lists, st.sampled_from([", ", ",", " , ", ",\n"]),
       st.sampled_from(MODELS), st.sampled_from([(), (BLOCKED,)]))
def test_every_entry_point_queues_only_what_a_channel_for_all_ages_draws(
        entry_point, tags, separator, model, blocked):
    text = separator.join(tags)
    if entry_point == "ponybot draw":
        blocked = ()  # on the owner's own machine: no server, nothing blocked
    try:
        job = job_from(entry_point, text, model, channel(blocked=blocked))
    except UserFacingError as refusal:
        said = str(refusal)
        if "age-restricted" in said:
            assert any(SPELLED_REFUSED.search(t.lower()) for t in tags), said
        if "Not allowed on this server" in said:
            assert blocked and any(BLOCKED in t for t in tags), said
        return
    assert_for_all_ages(job, model, blocked)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("entry_point", ALL_ENTRY_POINTS)
@pytest.mark.parametrize("tags", ["suggestive, pony, solo", "rating:suggestive, pony, solo",
                                  "Rating: Suggestive!, pony, solo", "pony, nudity, solo"])
def test_what_issue_16_saw_is_drawn_safe_with_the_channels_negatives(entry_point, tags, model):
    job = job_from(entry_point, tags, model, channel())

    assert_for_all_ages(job, model, ())
    assert {"pony", "solo"} <= {squash(t) for t in caption_tags(job.prompt, model.caption)}


@pytest.mark.parametrize("entry_point", ALL_ENTRY_POINTS)
def test_explicit_is_refused_outside_age_restricted_channels_at_every_entry_point(entry_point):
    with pytest.raises(UserFacingError, match="needs an age-restricted channel"):
        job_from(entry_point, "Rating: Explicit, pony", MODELS[1], channel())


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)  # `ponybot draw` has no server
def test_a_blocked_tag_is_refused_at_every_entry_point(entry_point):
    with pytest.raises(UserFacingError, match="Not allowed on this server"):
        job_from(entry_point, f"safe, pony, {BLOCKED}", MODELS[1],
                 channel(blocked=(config_tag(BLOCKED),)))


V2 = CONFIG.model("v2")
READ_BACK = ["Draw this", "🔁 re-roll", "U1", "V2", "⬆️ hires"]


@pytest.mark.parametrize("entry_point", READ_BACK)
@pytest.mark.parametrize(("caption", "drawn"), [
    ("pony,suggestive,solo", ["pony", "safe", "solo"]),
    ("pony,nudity,solo", ["safe", "pony", "solo"]),
    ("pony,rating:suggestive", ["pony", "safe"]),
    ("pony , suggestive,\nsolo", ["pony", "safe", "solo"]),
])  # fmt: skip
def test_a_caption_read_back_is_split_on_commas_whatever_the_models_separator(
        entry_point, caption, drawn):
    """A picture's parameters (or an earlier job) may join a space-separated model's tags with
    commas: each is still a tag, so `suggestive` is drawn `safe` and `nudity` is left out, as
    /pony does (red team, defect 3)."""
    job = job_from(entry_point, caption, V2, channel())

    assert caption_tags(job.prompt, V2.caption) == drawn
    assert_for_all_ages(job, V2, ())
    assert {"suggestive", "nudity"} <= set(caption_tags(job.negative_prompt, V2.caption))


def job_with_negative(entry_point: str, text: str, negative: str, model: ModelEntry,
                      here: Channel) -> Built:
    """What `entry_point` builds from `text` with `negative` as its negative tags (typed, or
    the earlier job's or picture's negative prompt)."""
    source = earlier_job(text, model, negative=negative)
    form = PonyOptions.parse(CONFIG, tags=text, negative=negative)
    requests: dict[str, Request] = {
        "/pony": PonyRequest(by=BY, options=PonyOptions.parse(
            CONFIG, tags=text, negative=negative, model=model.id)),
        "🔁 re-roll": FromResult(kind="reroll", by=BY, source=source),
        "U1": FromResult(kind="upscale", by=BY, source=source, index=0),
        "V2": FromResult(kind="vary", by=BY, source=source, index=1),
        "⬆️ hires": FromResult(kind="hires", by=BY, source=source),
        "✏️ edit under a result": EditRequest(by=BY, source=source, form=form),
        "✏️ edit of a queued job": EditRequest(by=BY, source=source, form=form, in_place=True),
        "Draw this": DrawThisRequest(by=BY, parameters=A1111Parameters(
            prompt=text, negative_prompt=negative, model=model.name)),
    }
    return build_job(requests[entry_point], here, None, config=CONFIG)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_the_rating_a_channel_forces_is_never_in_the_negative_prompt(entry_point, model):
    """`safe` in the negative prompt would push away from the `safe` the channel forces as
    hard as the caption pushes towards it (red team, defect 6)."""
    negative = "safe, rating:safe, Rating: Safe!, clothes"
    built = job_with_negative(entry_point, "pony, solo", negative, model, channel())

    assert_for_all_ages(built.job, model, ())
    assert "clothes" in built.job.negative_prompt
    if entry_point in READ_BACK:  # what the user did not type: say so
        assert any("out of the negative prompt" in n for n in built.notes), built.notes


def test_an_age_restricted_channel_keeps_a_ratings_negative_as_written():
    built = job_with_negative("Draw this", "pony, solo", "safe, clothes", MODELS[1],
                              channel(age_restricted=True))
    assert built.job.negative_prompt == "safe, clothes"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("entry_point", ALL_ENTRY_POINTS)
@pytest.mark.parametrize(("typed", "word"), [
    ("suggestive pose", "suggestive"), ("casual nudity", "nudity"),
    ("casual_nudity", "nudity"), ("Suggestive-Looking", "suggestive"),
])  # fmt: skip
def test_a_tag_with_a_channel_negative_word_in_it_is_left_out_with_a_note(
        entry_point, typed, word, model):
    """A tag that has `suggestive` or a channel negative as a word is left out and the user
    told, never kept (red team, defect 7); `explicit` and `questionable` anywhere in a tag
    are refused (test_captions_policy.py)."""
    if entry_point == "ponybot draw":
        job, notes = cli_job_and_notes(f"pony, {typed}, solo", model, channel())
    else:
        built = build_job(ENTRY_POINTS[entry_point](f"pony, {typed}, solo", model), channel(),
                          None, config=CONFIG)
        job, notes = built.job, built.notes

    assert not spells(job.prompt, word), job.prompt
    assert {"pony", "solo"} <= {squash(t) for t in caption_tags(job.prompt, model.caption)}
    assert_for_all_ages(job, model, ())
    assert any("not age-restricted" in n for n in notes), notes


def test_a_word_that_only_contains_a_channel_negative_is_kept():
    job = job_from("/pony", "pony, unsuggestive, solo", MODELS[1], channel())
    assert "unsuggestive" in job.prompt


def cli_job_and_notes(text: str, model: ModelEntry, here: Channel) -> tuple[Job, tuple[str, ...]]:
    from ponybot_cli.draw import job_for

    args = argparse.Namespace(tags=text, negative=None, seed=None, steps=None, cfg=None,
                              count=None, size=None, model=model.id, upscale=False,
                              nsfw=here.age_restricted)
    settings = LoadedConfig(config=CONFIG, secrets=Secrets(), path=ROOT / "config.toml")
    return job_for(settings, args)


# A channel of another server, and another channel of this one.
ELSEWHERE = [Channel(guild_id=GUILD + 1, channel_id=CHANNEL + 7, age_restricted=True),
             Channel(guild_id=GUILD, channel_id=CHANNEL + 1, age_restricted=True)]


@pytest.mark.parametrize("here", ELSEWHERE, ids=["another server", "another channel"])
@pytest.mark.parametrize("entry_point", ["🔁 re-roll", "U1", "V2", "⬆️ hires",
                                         "✏️ edit under a result"])
def test_a_button_naming_a_job_of_another_channel_is_refused(entry_point, here):
    """Discord delivers a click only for a button on the message, but a forged one could name
    any job: a job is only ever re-drawn in the channel it was drawn in (red team, defect 8)."""
    with pytest.raises(UserFacingError, match="belongs to a message in another channel"):
        job_from(entry_point, "pony, solo", MODELS[1], here)


@pytest.mark.parametrize("picture", [
    A1111Parameters(prompt="pony, solo", negative_prompt="lowres", steps=30, sampler="DDIM",
                    cfg=7.0, seed=5, width=512, height=512, model="Lun's pony model V1",
                    other={f"Junk{i}": "x" * 40 for i in range(1200)}),
    A1111Parameters(prompt="pony, solo", steps=10**40, sampler="Euler a" * 3000, cfg=1e300,
                    seed=-(10**60), width=10**50, height=3, model="v1", denoising_strength=0.4,
                    cut=True),
], ids=["junk pairs", "numbers and names out of range"])  # fmt: skip
def test_draw_this_draws_the_same_from_what_is_kept_as_from_the_whole_picture(picture):
    """The Parameters menu keeps only what Draw this reads, bounded (red team, defect 4): the
    job and the notes it makes from that are the ones the whole picture gives."""
    kept = for_draw_this(picture, CONFIG)

    assert len(kept.model_dump_json()) < 2 * CONFIG.limits.max_prompt_chars + 1_000
    assert kept.other == {}
    whole = build_job(DrawThisRequest(by=BY, parameters=picture), channel(), None, config=CONFIG)
    again = build_job(DrawThisRequest(by=BY, parameters=kept), channel(), None, config=CONFIG)
    made = {"id", "created_at", "seed"} if picture.seed is None or picture.seed < 0 else {
        "id", "created_at"}
    assert again.job.model_dump(exclude=made) == whole.job.model_dump(exclude=made)
    assert len(again.notes) == len(whole.notes)


@settings(max_examples=200, deadline=None, database=None)
@given(tag_lists, st.sampled_from(MODELS))
def test_a_caption_written_for_the_channel_is_re_drawn_there_exactly_as_it_is(tags, model):
    """The policy changes nothing it made already: a /pony job's re-roll, upscale, variation
    and hires in the same channel keep its caption and negative prompt to the letter."""
    try:
        first = job_from("/pony", ", ".join(tags), model, channel())
    except UserFacingError:
        return
    for kind in ("reroll", "upscale", "vary", "hires"):
        again = build_job(FromResult(kind=kind, by=BY, source=first, index=0), channel(), None,
                          config=CONFIG).job
        assert (again.prompt, again.negative_prompt) == (first.prompt, first.negative_prompt)


@pytest.mark.parametrize("entry_point", ["🔁 re-roll", "Draw this"])
def test_age_restricted_channels_draw_an_earlier_caption_as_written(entry_point):
    caption = "Rating: Suggestive!, pony,solo, nudity"
    job = job_from(entry_point, caption, MODELS[1], channel(age_restricted=True))
    assert job.prompt == caption


def test_an_upscale_of_an_upload_has_no_caption_to_write():
    image = UploadedImage(url="https://cdn.discordapp.com/a/b/c.png", filename="c.png",
                          content_type="image/png", size=10, width=100, height=50)
    job = build_job(UpscaleRequest(by=BY, image=image), channel(), None, config=CONFIG).job
    assert (job.kind, job.prompt, job.width, job.height) == (JobKind.UPSCALE, "", 104, 64)


def test_a_queued_jobs_edit_is_checked_only_against_the_jobs_own_channel():
    model = MODELS[1]
    elsewhere = Channel(guild_id=GUILD, channel_id=CHANNEL + 1, age_restricted=True)
    request = EditRequest(by=BY, source=earlier_job("pony", model),
                          form=PonyOptions.parse(CONFIG, tags="explicit, pony"), in_place=True)
    with pytest.raises(ValueError, match="the job's own channel"):
        build_job(request, elsewhere, None, config=CONFIG)
    with pytest.raises(UserFacingError, match="needs an age-restricted channel"):
        build_job(request, channel(), None, config=CONFIG)


def test_the_seed_is_kept_when_given_and_drawn_when_not():
    asked = build_job(ENTRY_POINTS["/pony"]("pony, seed", MODELS[0]), channel(), None,
                      config=CONFIG).job
    given_ = build_job(PonyRequest(by=BY, options=PonyOptions.parse(CONFIG, tags="pony",
                                                                    seed=42)),
                       channel(), None, config=CONFIG).job
    assert (given_.seed, given_.seeded) == (42, True) and not asked.seeded
    rerolls = {build_job(FromResult(kind="reroll", by=BY, source=given_), channel(), None,
                         config=CONFIG).job.seed for _ in range(8)}
    assert len(rerolls) > 1 and all(0 <= s for s in rerolls)


# --- every entry point calls build_job ---------------------------------------------------------

PRODUCTION = ["bot", "cogs", "ponybot_cli", "ponybot_core", "ponybot_request"]
BUILDER = ROOT / "ponybot_request" / "jobs.py"
# Each way in, by the function Discord (or the command line) calls.
ENTRY_FUNCTIONS = {
    ("cogs/pony.py", "pony"): "/pony",
    ("cogs/results.py", "reroll"): "🔁 Re-roll",
    ("cogs/results.py", "upscale"): "U<i>",
    ("cogs/results.py", "vary"): "V<i>",
    ("cogs/results.py", "hires"): "⬆️ Hires",
    ("cogs/edit.py", "redraw_edited"): "✏️ Edit under a result",
    ("cogs/edit.py", "edit_in_place"): "✏️ Edit of a queued job",
    ("cogs/parameters.py", "draw"): "Draw this",
    ("cogs/upscale.py", "upscale"): "/upscale",
    ("ponybot_cli/draw.py", "job_for"): "ponybot draw",
}


def _functions(path: Path) -> dict[str, ast.AST]:
    return {node.name: node for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _called(node: ast.AST) -> set[str]:
    names = set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        func = call.func
        names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def _reaches_build_job(functions: dict[str, ast.AST], name: str) -> bool:
    """`name` calls build_job, itself or through functions of its own module."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in functions:
            continue
        seen.add(current)
        called = _called(functions[current])
        if "build_job" in called:
            return True
        todo.extend(called)
    return False


@pytest.mark.parametrize(("where", "name"), list(ENTRY_FUNCTIONS),
                         ids=list(ENTRY_FUNCTIONS.values()))
def test_every_entry_point_calls_build_job(where, name):
    functions = _functions(ROOT / where)
    assert name in functions, f"{where} has no {name}()"
    assert _reaches_build_job(functions, name), f"{where}:{name} does not call build_job"


def test_build_job_is_the_only_place_a_job_is_made_or_a_seed_drawn():
    """No `Job(...)`, `Job.model_validate(...)`, `Job.model_construct(...)`, `secrets.randbelow`
    or `random` in production code outside ponybot_request/jobs.py. (Reading a stored job back,
    `Job.from_json`, is not making one; the worker's warm-up in inference/ never enters the
    queue.)"""
    offenders = []
    for folder in PRODUCTION:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == BUILDER:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                made = (isinstance(func, ast.Name) and func.id == "Job") or (
                    isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and func.value.id == "Job"
                    and func.attr in ("model_validate", "model_construct"))
                seeded = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and (func.value.id, func.attr) in {("secrets", "randbelow"),
                                                       ("random", "randint"),
                                                       ("random", "randrange")}
                if made or seeded:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_request_package_imports_neither_discord_nor_torch_nor_the_bot():
    code = ("import sys, ponybot_request.jobs, ponybot_request.clip_tokens\n"
            "print(','.join(m for m in ('discord', 'torch', 'diffusers', 'transformers', 'bot', "
            "'cogs', 'inference') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


# --- what a caption may hold, whatever wrote it ------------------------------------------------

MAX_TAGS = CONFIG.limits.max_tags


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("entry_point", ALL_ENTRY_POINTS)
def test_more_tags_than_pony_takes_are_refused_at_every_entry_point(entry_point, model):
    # A picture's parameters (Draw this) or an old job (the buttons) once queued 750 tags
    # that /pony refuses, and every one of them was read against every blocked tag.
    text = ", ".join(f"tag{i}" for i in range(MAX_TAGS + 1))
    with pytest.raises(UserFacingError, match=f"You gave {MAX_TAGS + 1} tags; "
                                              f"at most {MAX_TAGS} are allowed"):
        job_from(entry_point, text, model, channel())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("age_restricted", [False, True])
def test_a_caption_written_for_the_most_tags_pony_takes_stays_legal_to_re_draw(
        model, age_restricted):
    here = channel(age_restricted=age_restricted)
    tags = ", ".join(f"tag{i}" for i in range(MAX_TAGS))
    negative = ", ".join(f"bad{i}" for i in range(MAX_TAGS))
    first = build_job(PonyRequest(by=BY, options=PonyOptions.parse(
        CONFIG, tags=tags, negative=negative, model=model.id)), here, None, config=CONFIG).job
    for kind, index in (("reroll", None), ("upscale", 0), ("vary", 0), ("hires", None)):
        build_job(FromResult(kind=kind, by=BY, source=first, index=index), here, None,
                  config=CONFIG)
    build_job(DrawThisRequest(by=BY, parameters=A1111Parameters(
        prompt=first.prompt, negative_prompt=first.negative_prompt, model=model.name)),
        here, None, config=CONFIG)


def test_reading_a_caption_for_blocked_tags_costs_the_same_however_many_are_blocked():
    # 200 blocked tags that all start the way a 750-word caption goes on: each word of the
    # caption is followed once along the spellings they share, not once per blocked tag.
    caption = " ".join(["a"] * 750)
    pieces = policy._pieces(caption)
    shared = " ".join(["a"] * 5)

    def steps(count: int) -> int:
        search = policy.BlockedSearch.for_tags([f"{shared} b{i}" for i in range(count)], CONFIG)
        assert search.find(caption, pieces) == {}
        return search.steps

    words_read = sum(len(policy._words(p)) for p, _ in pieces) + 750
    assert steps(200) == steps(1) <= words_read * (len(shared.split()) + 2)


def test_a_refusal_names_each_blocked_tag_as_the_caption_wrote_it():
    blocked = ("rainbow dash", "twilight sparkle", "balloons", "oc:kindle")
    with pytest.raises(UserFacingError) as refused:
        job_from("Draw this", "pony, Rainbow-Dash, the twilight sparkle, balloon, kindle oc",
                 MODELS[0], channel(blocked=blocked))
    assert str(refused.value).startswith(
        "Not allowed on this server: `Rainbow-Dash` (blocked: `rainbow dash`), "
        "`the twilight sparkle` (blocked: `twilight sparkle`). ")


# --- look-alike letters ------------------------------------------------------------------------

# Letters a person (and CLIP's byte-level BPE, for some) reads as the Latin one they look like.
LOOKALIKES = {
    "Cyrillic е in explicit": "pony, \u0435xplicit, solo",
    "Cyrillic х and р in explicit": "pony, e\u0445\u0440licit, solo",
    "dotless ı in explicit": "pony, expl\u0131c\u0131t, solo",
    "e with a combining acute": "pony, e\u0301xplicit, solo",
    "precomposed é": "pony, \u00e9xplicit, solo",
    "Greek ο in questionable": "pony, questi\u03bfnable, solo",
    "Cyrillic е in suggestive": "pony, sugg\u0435stive, solo",
    "dotless ı in nudity": "pony, nud\u0131ty, solo",
    "small capital ᴇ": "pony, \u1d07xplicit, solo",
}
LOOKALIKE_WORDS = ("explicit", "questionable", "suggestive", "nudity")
# The reader's own table, not the bot's: what each case above reads as.
AS_LATIN = str.maketrans({"\u0435": "e", "\u0445": "x", "\u0440": "p", "\u0131": "i",
                          "\u03bf": "o", "\u03bd": "n", "\u03b9": "i", "\u1d07": "e"})


def read_as_latin(text: str) -> list[str]:
    """The caption's pieces as a person reads them: accents dropped, look-alikes as Latin."""
    text = unicodedata.normalize("NFKD", text.casefold()).translate(AS_LATIN)
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return [re.sub(r"[\W_]", "", p) for p in re.split(r"[\s,]+", text)]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("case", list(LOOKALIKES))
@pytest.mark.parametrize("entry_point", ALL_ENTRY_POINTS)
def test_a_refused_rating_or_channel_negative_in_look_alike_letters_never_reaches_a_channel_for_all_ages(  # noqa: E501
        entry_point, case, model):
    try:
        job = job_from(entry_point, LOOKALIKES[case], model, channel())
    except UserFacingError:
        return  # refused
    assert not any(w in p for p in read_as_latin(job.prompt) for w in LOOKALIKE_WORDS), \
        job.prompt


@pytest.mark.parametrize("typed", ["pony, r\u0430inbow dash", "pony, r\u00e1inbow dash",
                                   "pony, RAINBOW D\u0410SH", "pony, rainbow, dash"])
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)  # `ponybot draw` has no server
def test_a_blocked_tag_in_look_alike_letters_is_refused_at_every_entry_point(entry_point, typed):
    with pytest.raises(UserFacingError, match="Not allowed on this server"):
        job_from(entry_point, typed, MODELS[0], channel(blocked=("rainbow dash",)))


@pytest.mark.parametrize("entry_point", ["Draw this", "🔁 re-roll"])
def test_look_alike_letters_are_only_read_never_rewritten_in_the_caption(entry_point):
    caption = "safe, caf\u00e9, \u0440\u043e\u043d\u0438, pony, unsuggestive"
    job = job_from(entry_point, caption, MODELS[0], channel())
    assert job.prompt == caption
