"""/settings: each user's and each channel's saved defaults for /pony, end to end on real
discord.py against the fake Discord and a real Redis; and the order in which they apply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from bot.guild_settings import GuildSettings
from bot.saved_settings import Layers, SavedSettings
from ponybot_core.config import Config, LoadedConfig, Sampler
from ponybot_core.job import Job
from ponybot_core.keys import Keys
from ponybot_request.options import PonyOptions
from ponybot_request.resolution import Layer, resolve
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.world import (
    CHANNEL_ID,
    GUILD_ID,
    NSFW_CHANNEL_ID,
    OTHER_CHANNEL_ID,
    OTHER_USER_ID,
    USER_ID,
    running_bot,
    tiny_config,
)
from tests.conftest import queued_job_id

MANAGE_GUILD = 1 << 5
KEYS = Keys()
NO_UPSCALER = "no upscaler is configured"


def with_models(settings: LoadedConfig, tiny_pipeline_dir: Path, fake: FakeDiscord,
                **overrides: object) -> LoadedConfig:
    """The tests' config where `tiny-v2` has its own steps and cfg (layer 5, below the
    people's choices) and one upscaler is configured (the bot never opens its file)."""
    base = tiny_config(tiny_pipeline_dir, fake)
    models = [base.model("tiny"), base.model("tiny-v2").model_copy(update={"steps": 9,
                                                                            "cfg": 9.5})]
    raw: dict[str, object] = {"models": [m.model_dump() for m in models],
                              "upscalers": [{"id": "x4", "name": "X4", "path": "/nowhere.pth"}]}
    raw.update(overrides)
    return settings.model_copy(update={"config": tiny_config(tiny_pipeline_dir, fake, **raw)})


@pytest.fixture
def settings(settings: LoadedConfig, tiny_pipeline_dir: Path, fake: FakeDiscord) -> LoadedConfig:
    return with_models(settings, tiny_pipeline_dir, fake)


# --- helpers -----------------------------------------------------------------------------------


async def command(fake, name: str, options: dict | None = None, *, user_id: int = USER_ID,
                  channel_id: int = CHANNEL_ID, permissions: int = 0, validate: bool = True):
    itx = await fake.invoke(name, options or {}, channel_id=channel_id, user_id=user_id,
                            permissions=permissions, validate=validate)
    await itx.wait_response(timeout=5)
    return itx


async def pony(fake, *, user_id: int = USER_ID, channel_id: int = CHANNEL_ID,
               validate: bool = True, **options):
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    return await command(fake, "pony", options, user_id=user_id, channel_id=channel_id,
                         validate=validate)


async def queued(redis: Redis, itx) -> Job:
    """The job a public queued message stands for, as the worker will read it."""
    assert not itx.ephemeral, itx.original.content
    raw = await redis.hget(KEYS.job(queued_job_id(itx)), "job")
    assert raw is not None
    return Job.model_validate_json(raw)


async def all_jobs(redis: Redis) -> list[Job]:
    return [Job.model_validate_json(raw) async for key in redis.scan_iter(match=KEYS.job("*"))
            if (raw := await redis.hget(key, "job"))]


async def saved(redis: Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}


USER_KEY = KEYS.user_settings(GUILD_ID, USER_ID)
CHANNEL_KEY = KEYS.channel_settings(GUILD_ID, CHANNEL_ID)


# --- your defaults -----------------------------------------------------------------------------


async def test_saved_defaults_shape_the_next_pony_and_its_answer_names_them(bot, fake, redis):
    answer = await command(fake, "settings set", {"size": "portrait", "steps": 5, "cfg": 6.5,
                                                  "negative": "grimdark, blood"})
    assert answer.ephemeral and "✅ Saved your defaults `size`, `steps`, `cfg`, `negative`" \
        in answer.original.content
    assert await saved(redis, USER_KEY) == {"size": "portrait", "steps": "5", "cfg": "6.5",
                                            "negative": "grimdark, blood"}

    itx = await pony(fake)

    job = await queued(redis, itx)
    assert (job.width, job.height, job.steps, job.cfg) == (64, 96, 5, 6.5)
    assert "grimdark" in job.negative_prompt and "blood" in job.negative_prompt
    assert ("⚙️ defaults from your /settings: size portrait · steps 5 · cfg 6.5 · negative tags"
            in itx.original.content)
    assert "this channel's" not in itx.original.content


async def test_pony_options_override_saved_defaults_and_the_answer_names_only_what_applied(
        bot, fake, redis):
    await command(fake, "settings set", {"model": "tiny-v2", "steps": 5, "count": 2})

    itx = await pony(fake, steps=3, negative="blood")

    job = await queued(redis, itx)
    assert (job.model_id, job.steps, job.count) == ("tiny-v2", 3, 2)
    assert "blood" in job.negative_prompt
    assert "⚙️ defaults from your /settings: model Tiny Pony V2 · count 2\n" in \
        itx.original.content + "\n"


async def test_a_users_defaults_are_theirs_alone_and_only_in_that_server(bot, fake, redis):
    await command(fake, "settings set", {"steps": 5})

    someone_else = await queued(redis, await pony(fake, user_id=OTHER_USER_ID))
    other_server = await queued(redis, await pony(fake, channel_id=OTHER_CHANNEL_ID))
    mine = await queued(redis, await pony(fake))

    assert (someone_else.steps, other_server.steps, mine.steps) == (2, 2, 5)


async def test_clear_forgets_one_default_or_all_of_them(bot, fake, redis):
    await command(fake, "settings set", {"steps": 5, "count": 2, "size": "landscape"})

    one = await command(fake, "settings clear", {"setting": "steps"})
    assert one.ephemeral and "Forgot your `steps` default" in one.original.content
    assert await saved(redis, USER_KEY) == {"count": "2", "size": "landscape"}
    job = await queued(redis, await pony(fake))
    assert (job.steps, job.count, job.width) == (2, 2, 96)

    every = await command(fake, "settings clear")
    assert every.ephemeral and "Forgot all your defaults here" in every.original.content
    assert await redis.exists(USER_KEY) == 0


async def test_show_lists_yours_the_channels_and_what_pony_uses_with_where_each_comes_from(
        bot, fake):
    await command(fake, "settings set", {"steps": 5, "negative": "blood"})
    await command(fake, "settings channel set", {"size": "portrait", "steps": 7},
                  permissions=MANAGE_GUILD)

    shown = await command(fake, "settings show")

    assert shown.ephemeral
    assert shown.original.content.splitlines() == [
        "**Your defaults here** (`/settings set`, `/settings clear`)",
        "steps 5 · negative `blood`",
        "**This channel's defaults** (admins: `/settings channel set`)",
        "size portrait · steps 7",
        "**What `/pony` uses here** (its own options override all of this)",
        "model Tiny Pony (the bot's) · size portrait (this channel's) · steps 5 (yours) · "
        "cfg 7.5 (the bot's) · count 1 (the bot's) · upscale off (the bot's) · "
        "negative `blood` (yours)",
    ]


# --- the channel's defaults --------------------------------------------------------------------


async def test_channel_defaults_apply_to_everyone_there_below_their_own(bot, fake, redis):
    answer = await command(fake, "settings channel set", {"count": 2, "steps": 7},
                           permissions=MANAGE_GUILD)
    assert answer.ephemeral and "Saved this channel's defaults `steps`, `count`" in \
        answer.original.content
    await command(fake, "settings set", {"steps": 5}, user_id=OTHER_USER_ID)

    mine = await pony(fake)
    theirs = await pony(fake, user_id=OTHER_USER_ID)
    elsewhere = await pony(fake, channel_id=NSFW_CHANNEL_ID)

    assert [(j.steps, j.count) for j in [await queued(redis, i) for i in
                                         (mine, theirs, elsewhere)]] == [(7, 2), (5, 2), (2, 1)]
    assert "⚙️ defaults from this channel's /settings: steps 7 · count 2" in mine.original.content
    assert "⚙️ defaults from your /settings: steps 5" in theirs.original.content
    assert "⚙️ defaults from this channel's /settings: count 2" in theirs.original.content
    assert "⚙️" not in elsewhere.original.content


@pytest.mark.parametrize("name", ["settings channel set", "settings channel clear"])
async def test_only_server_admins_can_change_a_channels_defaults(bot, fake, redis, name):
    await redis.hset(CHANNEL_KEY, "steps", "7")
    options = {"steps": 3} if name.endswith("set") else {}

    refused = await command(fake, name, options)

    assert refused.ephemeral
    assert "You need the Manage Server permission" in refused.original.content
    assert await saved(redis, CHANNEL_KEY) == {"steps": "7"}


async def test_a_channel_admin_can_clear_its_defaults(bot, fake, redis):
    await command(fake, "settings channel set", {"steps": 7, "count": 2},
                  permissions=MANAGE_GUILD)

    await command(fake, "settings channel clear", {"setting": "count"}, permissions=MANAGE_GUILD)

    assert await saved(redis, CHANNEL_KEY) == {"steps": "7"}


# --- bad values --------------------------------------------------------------------------------


BAD_SETTINGS = [
    ({"steps": 0}, "`steps` must be between 1 and 60"),
    ({"steps": 999}, "`steps` must be between 1 and 60"),
    ({"cfg": 50.0}, "`cfg` must be between 1 and 20"),
    ({"count": 9}, "`count` must be between 1 and 4"),
    ({"size": "huge"}, "`size` must be one of square, portrait, landscape"),
    ({"model": "nope"}, "Unknown model 'nope'"),
    ({"negative": "... !!"}, "`negative` has no tags in it"),
    ({"steps": 5, "cfg": 50.0}, "`cfg` must be between"),  # all or nothing
    ({}, "Give at least one option to save"),
]


@pytest.mark.parametrize(("options", "message"), BAD_SETTINGS,
                         ids=[",".join(o) or "nothing" for o, _ in BAD_SETTINGS])
@pytest.mark.parametrize("name", ["settings set", "settings channel set"])
async def test_a_bad_value_is_refused_naming_the_option_and_nothing_is_stored(
        bot, fake, redis, name, options, message):
    answer = await command(fake, name, options, permissions=MANAGE_GUILD, validate=False)

    assert answer.ephemeral
    assert message in answer.original.content
    assert await redis.exists(USER_KEY, CHANNEL_KEY) == 0
    assert await all_jobs(redis) == []


async def test_saving_upscale_needs_an_upscaler(fake, redis, settings, tiny_pipeline_dir):
    none = with_models(settings, tiny_pipeline_dir, fake, upscalers=[])
    async with running_bot(none, fake):
        answer = await command(fake, "settings set", {"upscale": True})
        off = await command(fake, "settings set", {"upscale": False})

    assert answer.ephemeral and "`upscale` is not available" in answer.original.content
    assert off.ephemeral and await saved(redis, USER_KEY) == {"upscale": "false"}


async def test_bad_pony_input_still_queues_nothing_with_defaults_saved(bot, fake, redis):
    await command(fake, "settings set", {"steps": 5, "count": 2})

    refused = await pony(fake, cfg=99.0, validate=False)

    assert refused.ephemeral and "`cfg` must be between" in refused.original.content
    assert await all_jobs(redis) == []


# --- the server's quality prefix ---------------------------------------------------------------


async def test_a_server_admin_turns_the_models_quality_prefix_off_and_on_again(
        fake, redis, settings, tiny_pipeline_dir):
    # A model whose card puts quality tags first (as V6 XL's `score_9, score_8_up, ...`).
    tiny = settings.config.model("tiny")
    caption = tiny.caption.model_copy(update={
        "quality_prefix": ["score_9", "score_8_up"],
        "rating_tags": {"safe": "rating_safe", "explicit": "rating_explicit"}})
    config = with_models(settings, tiny_pipeline_dir, fake,
                         models=[tiny.model_copy(update={"caption": caption}).model_dump()])
    async with running_bot(config, fake):
        default = await queued(redis, await pony(fake, tags="solo"))
        refused = await command(fake, "settings server quality_prefix", {"on": False})
        off = await command(fake, "settings server quality_prefix", {"on": False},
                            permissions=MANAGE_GUILD)
        without = await queued(redis, await pony(fake, tags="solo"))
        shown = await command(fake, "settings show")
        await command(fake, "settings server quality_prefix", {"on": True},
                      permissions=MANAGE_GUILD)
        again = await queued(redis, await pony(fake, tags="solo"))

    # The card's prefix, then the rating and the score tag the bot adds, then what was typed.
    assert default.prompt == "score_9, score_8_up, rating_safe, scr100, solo"
    assert refused.ephemeral and "Manage Server" in refused.original.content
    assert off.ephemeral and "no longer start with the model card's quality tags" in \
        off.original.content
    assert without.prompt == "rating_safe, scr100, solo"
    assert "Quality prefix (off; admins: `/settings server quality_prefix`): Tiny Pony " \
        "captions leave out `score_9, score_8_up`" in shown.original.content
    assert again.prompt == default.prompt
    assert "quality_prefix" not in await saved(redis, KEYS.guild(GUILD_ID))


# --- over time ---------------------------------------------------------------------------------


async def test_saved_defaults_survive_a_bot_restart(fake, redis, settings):
    async with running_bot(settings, fake):
        await command(fake, "settings set", {"steps": 5, "upscale": True})
        await command(fake, "settings channel set", {"size": "landscape"},
                      permissions=MANAGE_GUILD)

    async with running_bot(settings, fake):
        itx = await pony(fake)

    job = await queued(redis, itx)
    assert (job.steps, job.upscale, job.width, job.height) == (5, True, 96, 64)
    assert "defaults from your /settings: steps 5 · upscale on" in itx.original.content
    assert "defaults from this channel's /settings: size landscape" in itx.original.content


async def test_a_saved_value_config_no_longer_allows_is_ignored_with_a_note(
        fake, redis, settings, tiny_pipeline_dir):
    async with running_bot(settings, fake):
        await command(fake, "settings set", {"model": "tiny-v2", "steps": 40, "count": 3,
                                             "upscale": True})
        await command(fake, "settings channel set", {"cfg": 12.0}, permissions=MANAGE_GUILD)
    # config.toml changed: tiny-v2 and the upscaler gone, lower limits.
    changed = with_models(settings, tiny_pipeline_dir, fake, upscalers=[],
                          models=[settings.config.model("tiny").model_dump()],
                          limits={"steps_max": 20, "cfg_max": 10.0})

    async with running_bot(changed, fake):
        itx = await pony(fake)
        shown = await command(fake, "settings show")

    job = await queued(redis, itx)
    assert (job.model_id, job.steps, job.cfg, job.count, job.upscale) == ("tiny", 2, 7.5, 3,
                                                                          False)
    content = itx.original.content
    assert "⚙️ defaults from your /settings: count 3" in content
    assert "Your saved `model` is ignored: Unknown model 'tiny-v2'" in content
    assert "Your saved `steps` is ignored: `steps` must be between 1 and 20" in content
    assert "Your saved `upscale` is ignored: `upscale` is not available" in content
    assert "This channel's saved `cfg` is ignored: `cfg` must be between 1 and 10" in content
    assert "Your saved `model` is ignored" in shown.original.content
    # Nothing is forgotten: the values apply again if config.toml allows them again.
    assert (await saved(redis, USER_KEY))["model"] == "tiny-v2"


async def test_buttons_reuse_the_original_jobs_parameters_not_the_defaults(
        bot, fake, redis, start_worker):
    worker = await start_worker()
    first = await pony(fake, seed=42)
    await fake.wait_for(lambda: first.original.attachments and first.original.embeds,
                        timeout=30)
    # The re-roll's queued message is read below, before any worker draws it.
    worker.worker.stop()
    await asyncio.wait_for(worker.task, 10)
    await command(fake, "settings set", {"steps": 5, "size": "portrait", "model": "tiny-v2"})
    await command(fake, "settings channel set", {"count": 2}, permissions=MANAGE_GUILD)

    job_id = first.original.embeds[0]["footer"]["text"].removeprefix("job ")
    reroll = await fake.click(first.original.id, f"pony:reroll:{job_id}", user_id=USER_ID)
    await reroll.wait_response(timeout=5)

    again = await queued(redis, reroll)
    assert (again.model_id, again.steps, again.width, again.height, again.count) == (
        "tiny", 2, 64, 64, 1)
    assert "⚙️" not in reroll.original.content


# --- the order, property-tested end to end -----------------------------------------------------

# Each layer gives each setting its own value, so what /pony used says which layer won.
PER_LAYER = {
    "option": {"model": "tiny-v2", "steps": 3, "cfg": 3.0, "count": 4},
    "user": {"model": "tiny", "steps": 4, "cfg": 4.0, "count": 3},
    "channel": {"model": "tiny-v2", "steps": 5, "cfg": 5.0, "count": 2},
    "server": {"model": "tiny-v2"},
}
LAYERS = list(PER_LAYER)
FIELDS = ["model", "steps", "cfg", "count"]
which_layers_set = st.fixed_dictionaries(
    {field: st.sets(st.sampled_from([layer for layer in LAYERS if field in PER_LAYER[layer]]))
     for field in FIELDS})


def expected(field: str, setters: set[str]) -> tuple[object, str | None]:
    """The value /pony uses and the layer it came from: the first layer in the order that set
    it, else the model's own value (tiny-v2 has steps 9, cfg 9.5), else config.toml's."""
    for layer in LAYERS:
        if layer in setters:
            return PER_LAYER[layer][field], layer
    return None, None


@hypothesis_settings(max_examples=20, deadline=None, database=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setters=which_layers_set)
async def test_each_setting_comes_from_the_most_specific_layer_that_set_it(
        bot, fake, redis, setters):
    # One bot for every example (hence the health check off): each starts from nothing saved.
    await redis.delete(USER_KEY, CHANNEL_KEY, KEYS.guild(GUILD_ID))

    def given_by(layer: str) -> dict[str, object]:
        return {f: PER_LAYER[layer][f] for f in FIELDS if layer in setters[f]}

    if mine := given_by("user"):
        await command(fake, "settings set", mine)
    if channels := given_by("channel"):
        await command(fake, "settings channel set", channels, permissions=MANAGE_GUILD)
    if server := given_by("server"):
        await command(fake, "model set", server, permissions=MANAGE_GUILD)
    itx = await pony(fake, **given_by("option"))
    job = await queued(redis, itx)

    model, _ = expected("model", setters["model"])
    model = model or "tiny"
    used = {"model": job.model_id, "steps": job.steps, "cfg": job.cfg, "count": job.count}
    own = {"steps": 9, "cfg": 9.5} if model == "tiny-v2" else {}
    fallback = {"model": "tiny", "steps": own.get("steps", 2), "cfg": own.get("cfg", 7.5),
                "count": 1}
    for field in FIELDS:
        value, _ = expected(field, setters[field])
        assert used[field] == (fallback[field] if value is None else value), field
    # The answer names exactly the saved defaults that won, under whose they were.
    for layer, intro in (("user", "defaults from your /settings"),
                         ("channel", "defaults from this channel's /settings")):
        won = [f for f in FIELDS if expected(f, setters[f])[1] == layer]
        assert (intro in itx.original.content) == bool(won), (layer, won)


# --- the order, property-tested on the resolver ------------------------------------------------

SAVED = st.builds(SavedSettings, model=st.sampled_from([None, "tiny", "tiny-v2"]),
                  size=st.sampled_from([None, "square", "portrait", "landscape"]),
                  steps=st.one_of(st.none(), st.integers(1, 60)),
                  cfg=st.one_of(st.none(), st.floats(1, 20)),
                  count=st.one_of(st.none(), st.integers(1, 4)),
                  negative=st.sampled_from([None, "blood", "grimdark"]),
                  upscale=st.one_of(st.none(), st.booleans()))


@pytest.fixture(scope="module")
def config(tiny_pipeline_dir: Path) -> Config:
    base = tiny_config(tiny_pipeline_dir)
    v2 = base.model("tiny-v2").model_copy(update={"steps": 9, "sampler": Sampler.EULER_A})
    return tiny_config(tiny_pipeline_dir, models=[base.model("tiny").model_dump(),
                                                  v2.model_dump()],
                       upscalers=[{"id": "x4", "name": "X4", "path": "/nowhere.pth"}])


@hypothesis_settings(max_examples=300, deadline=None, database=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=SAVED, user=SAVED, channel=SAVED,
       server_model=st.sampled_from([None, "tiny", "tiny-v2", "retired"]))
def test_resolve_takes_each_value_from_the_first_layer_that_has_one(
        config, option, user, channel, server_model):
    options = PonyOptions.parse(config, tags="pony", model=option.model, size=option.size,
                                steps=option.steps, cfg=option.cfg, count=option.count,
                                negative=option.negative)
    layers = Layers(user=user, channel=channel, server=GuildSettings(model=server_model))

    resolved = resolve(options, config, layers, upscale=option.upscale)

    people = [(Layer.OPTION, option), (Layer.USER, user), (Layer.CHANNEL, channel)]
    server = [(Layer.SERVER, server_model)] if server_model in ("tiny", "tiny-v2") else []
    model_layers = [(layer, d.model) for layer, d in people] + server
    model_id, model_source = next(((v, layer) for layer, v in model_layers if v is not None),
                                  ("tiny", Layer.CONFIG))
    assert (resolved.model.id, resolved.sources["model"]) == (model_id, model_source)
    own = {"steps": 9} if model_id == "tiny-v2" else {}
    below = {"steps": 2, "cfg": 7.5, "size": "square", "count": 1, "negative": "",
             "upscale": False}
    used = {"steps": resolved.generation.steps, "cfg": resolved.generation.cfg,
            "size": resolved.size.value, "count": resolved.generation.count,
            "negative": resolved.options.negative, "upscale": resolved.upscale}
    for field, value in used.items():
        first = next(((getattr(d, field), layer) for layer, d in people
                      if getattr(d, field) is not None), None)
        if first is None:
            source = Layer.MODEL if field in own else Layer.CONFIG
            first = (own.get(field, below[field]), source)
        assert (value, resolved.sources[field]) == first, field
    assert resolved.generation.sampler == ("euler_a" if model_id == "tiny-v2" else "ddim")
    assert resolved.options.model == model_id
