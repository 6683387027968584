"""/model: the registry, each server's default model and blocked tags, on real discord.py
against the fake Discord and a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.guild_settings import GuildSettings
from cogs.models import _describe
from inference.models.cache import ModelCache
from inference.models.device import choose_placement
from ponybot_core import heartbeat
from ponybot_core.config import LoadedConfig, load_config
from ponybot_core.heartbeat import WorkerHeartbeat
from ponybot_core.job import Job
from ponybot_core.keys import Keys
from ponybot_testkit.world import (
    CHANNEL_ID,
    GUILD_ID,
    NSFW_CHANNEL_ID,
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    USER_ID,
    running_bot,
    tiny_config,
)

MANAGE_GUILD = 1 << 5
KEYS = Keys()


async def command(
    fake,
    name: str,
    options: dict | None = None,
    *,
    permissions: int = 0,
    channel_id: int | None = CHANNEL_ID,
    dm: bool = False,
    validate: bool = True,
):
    """Run a slash command as a member of the test server (or in a DM) and wait for the answer."""
    where = {"guild_id": None} if dm else {"channel_id": channel_id}
    itx = await fake.invoke(
        name, options or {}, user_id=USER_ID, permissions=permissions, validate=validate, **where
    )
    await itx.wait_response(timeout=5)
    return itx


async def pony(fake, tags: str = "twilight sparkle, unicorn", **options):
    return await command(fake, "pony", {"tags": tags, **options})


async def queued_jobs(redis: Redis) -> list[Job]:
    jobs = []
    async for key in redis.scan_iter(match=KEYS.job("*")):
        raw = await redis.hget(key, "job")
        if raw:
            jobs.append(Job.model_validate_json(raw))
    return jobs


async def stored(redis: Redis, field: str, guild_id: int = GUILD_ID) -> str | None:
    value = await redis.hget(KEYS.guild(guild_id), field)
    return value.decode() if value is not None else None


async def publish_heartbeat(redis: Redis, name: str, **fields) -> None:
    beat = WorkerHeartbeat(name=name, host="gpu-box", device="cuda:0", at=time.time(), **fields)
    await heartbeat.publish_heartbeat(redis, KEYS, beat, ttl_s=30)


# --- /model list and /model info ---------------------------------------------------------------


async def test_list_shows_every_model_and_which_live_worker_has_it_loaded(
    bot, fake, redis, settings: LoadedConfig, start_worker
):
    preloading = settings.model_copy(
        update={
            "config": settings.config.model_copy(
                update={"worker": settings.config.worker.model_copy(update={"preload": ["tiny"]})}
            )
        }
    )
    # A cache of its own: which models are loaded must not depend on earlier tests.
    fresh = ModelCache(preloading.config, base_dir=preloading.path.parent,
                       placement=choose_placement("cpu"))
    await start_worker("gpu-1", preloading, models=fresh)
    await fake.wait_for(
        lambda: redis.exists(KEYS.worker("gpu-1")),
        timeout=20,
        message="the worker's first heartbeat",
    )

    itx = await command(fake, "model list")

    assert itx.ephemeral
    lines = itx.original.content.splitlines()
    tiny = next(i for i, line in enumerate(lines) if "`tiny`" in line)
    v2 = next(i for i, line in enumerate(lines) if "`tiny-v2`" in line)
    assert "Tiny Pony" in lines[tiny] and "random weights for tests" in lines[tiny]
    assert lines[tiny].startswith("⭐")  # the bot's default until the server picks one
    assert "comma-separated tags" in lines[tiny + 1] and "`gpu-1`" in lines[tiny + 1]
    assert "Tiny Pony V2" in lines[v2] and not lines[v2].startswith("⭐")
    assert "space-separated tags" in lines[v2 + 1] and "not loaded" in lines[v2 + 1]
    assert "1 live worker" in itx.original.content


async def test_list_stars_the_server_default_once_set(bot, fake, redis):
    await command(fake, "model set", {"model": "tiny-v2"}, permissions=MANAGE_GUILD)

    lines = (await command(fake, "model list")).original.content.splitlines()

    assert [line for line in lines if line.startswith("⭐")] == [
        next(line for line in lines if "`tiny-v2`" in line)
    ]


async def test_info_shows_file_format_tags_defaults_and_a_workers_load_failure(bot, fake, redis):
    await publish_heartbeat(redis, "gpu-a", loaded=["tiny"])
    await publish_heartbeat(redis, "gpu-b", failed={"tiny-v2": "out of memory loading unet"})

    v2 = (await command(fake, "model info", {"model": "tiny-v2"})).original
    tiny = (await command(fake, "model info")).original  # no model: the server's default

    assert v2.ephemeral
    assert "**Tiny Pony V2** (`tiny-v2`)" in v2.content
    assert "File `tiny-pony`" in v2.content and "/" not in v2.content.split("File ")[1][:12]
    assert "format diffusers" in v2.content and "space-separated" in v2.content
    assert "sampler ddim · 2 steps · cfg 7.5" in v2.content
    assert "Loaded on: no live worker" in v2.content
    assert "Failed to load on `gpu-b`: `out of memory loading unet`" in v2.content
    assert "(`tiny`) ⭐ this server's default" in tiny.content
    assert "Score tag: `scr100` unless you type one" in tiny.content
    assert "Negative tags here: `explicit`" in tiny.content  # this channel is not age-restricted
    assert "Loaded on: `gpu-a`" in tiny.content and "Failed" not in tiny.content


async def test_info_shows_the_caption_profile_with_a_worked_example(bot, fake, redis):
    info = (await command(fake, "model info", {"model": "tiny-v2"})).original.content
    after_dark = (
        await command(fake, "model info", {"model": "tiny-v2"}, channel_id=NSFW_CHANNEL_ID)
    ).original.content

    assert "**Captions**: space-separated tags, `_` inside tags" in info
    assert "Rewrites, in order, also inside tags: `twilight sparkle→twilight`" in info
    assert "Over CLIP's 75 tokens: encoded in 75-token chunks" in info
    # The example, worked through this model's rules, as drawn in the channel asking.
    assert "Example in this channel: `twilight sparkle, artist:pierogarts, solo`" in info
    assert "→ the model sees `safe twilight by=pierogarts solo`" in info
    assert "→ the model sees `twilight by=pierogarts solo`" in after_dark
    assert "`twilight sparkle` → `twilight`" in info  # the note the user would get


def test_info_fits_discord_for_every_shipped_model():
    shipped = load_config(Path(__file__).resolve().parent.parent / "config.toml")
    for entry in shipped.models:
        lines = _describe(entry, shipped, GuildSettings(blocked_tags=("grimdark",)), [],
                          is_default=True, in_guild=True, age_restricted=False, problem=None)
        assert len("\n".join(lines)) <= 1960, entry.id  # nothing cut by _fit


async def test_unknown_model_is_refused_by_set_and_info(bot, fake, redis):
    for name in ("model set", "model info"):
        itx = await command(fake, name, {"model": "pony-xl"}, permissions=MANAGE_GUILD)
        assert itx.ephemeral
        assert "Unknown model `pony-xl`; choose one of tiny, tiny-v2." in itx.original.content
    assert await stored(redis, "model") is None


async def test_autocomplete_offers_the_registry(bot, fake):
    everything = await fake.autocomplete(
        "model set", {"model": ""}, focused="model", channel_id=CHANNEL_ID, permissions=MANAGE_GUILD
    )
    narrowed = await fake.autocomplete(
        "model info", {"model": "v2"}, focused="model", channel_id=CHANNEL_ID
    )

    assert [c["value"] for c in everything] == ["tiny", "tiny-v2"]
    assert narrowed == [{"name": "Tiny Pony V2 (tiny-v2)", "value": "tiny-v2"}]


# --- /model set --------------------------------------------------------------------------------


async def test_set_needs_manage_server_and_a_plain_member_changes_nothing(bot, fake, redis):
    itx = await command(fake, "model set", {"model": "tiny-v2"}, permissions=0)

    assert itx.ephemeral
    assert "Manage Server" in itx.original.content
    assert await stored(redis, "model") is None
    assert "Tiny Pony**" in (await pony(fake)).original.content


async def test_set_is_refused_in_direct_messages(bot, fake, redis):
    itx = await command(fake, "model set", {"model": "tiny-v2"}, dm=True, permissions=MANAGE_GUILD)

    assert itx.ephemeral
    assert "not in direct messages" in itx.original.content
    assert await redis.keys(KEYS.guild("*")) == []


async def test_server_default_is_what_pony_draws_with(bot, fake, redis):
    itx = await command(fake, "model set", {"model": "tiny-v2"}, permissions=MANAGE_GUILD)
    assert not itx.ephemeral and "**Tiny Pony V2** (`tiny-v2`)" in itx.original.content

    queued = (await pony(fake, "twilight sparkle, artist:pierogarts")).original

    assert "model **Tiny Pony V2**" in queued.content
    assert "twilight unicorn" not in queued.content  # rendered in V2's own caption style:
    assert "safe twilight by=pierogarts" in queued.content
    [job] = await queued_jobs(redis)
    assert job.model_id == "tiny-v2"
    assert await stored(redis, "model") == "tiny-v2"


async def test_the_default_belongs_to_one_server(bot, fake, redis):
    await command(fake, "model set", {"model": "tiny-v2"}, permissions=MANAGE_GUILD)

    elsewhere = await command(fake, "pony", {"tags": "applejack"}, channel_id=OTHER_CHANNEL_ID)

    assert "model **Tiny Pony**" in elsewhere.original.content
    assert await stored(redis, "model", OTHER_GUILD_ID) is None


async def test_pony_model_option_overrides_the_server_default(bot, fake, redis):
    await command(fake, "model set", {"model": "tiny-v2"}, permissions=MANAGE_GUILD)

    queued = (await pony(fake, model="tiny")).original

    assert "model **Tiny Pony**" in queued.content
    [job] = await queued_jobs(redis)
    assert job.model_id == "tiny"


async def test_server_default_survives_a_bot_restart(fake, redis, settings):
    async with running_bot(settings, fake):
        await command(fake, "model set", {"model": "tiny-v2"}, permissions=MANAGE_GUILD)

    async with running_bot(settings, fake):
        queued = (await pony(fake)).original

    assert "model **Tiny Pony V2**" in queued.content
    assert [job.model_id for job in await queued_jobs(redis)] == ["tiny-v2"]


async def test_a_default_removed_from_config_falls_back_to_the_bots_default(
    fake, redis, settings, tiny_pipeline_dir
):
    async with running_bot(settings, fake):
        await command(fake, "model set", {"model": "tiny-v2"}, permissions=MANAGE_GUILD)
    only_tiny = tiny_config(tiny_pipeline_dir, fake, models=[settings.config.model("tiny")])
    retired = settings.model_copy(update={"config": only_tiny})

    async with running_bot(retired, fake):
        queued = (await pony(fake)).original
        info = (await command(fake, "model info")).original
        listing = (await command(fake, "model list")).original

    assert "model **Tiny Pony**" in queued.content
    assert [job.model_id for job in await queued_jobs(redis)] == ["tiny"]
    assert "This server's default `tiny-v2` is no longer configured" in info.content
    assert "uses **Tiny Pony** (`tiny`), the bot's default" in info.content
    assert "⭐ **Tiny Pony** `tiny`" in listing.content and "tiny-v2" not in listing.content


# --- blocked tags ------------------------------------------------------------------------------


async def test_a_blocked_tag_refuses_pony_and_unblock_lifts_it(bot, fake, redis):
    blocked = await command(
        fake, "model block", {"tags": "Grimdark, artist:Bad_Artist"}, permissions=MANAGE_GUILD
    )
    assert blocked.ephemeral and "`grimdark`" in blocked.original.content
    assert json.loads(await stored(redis, "blocked")) == ["grimdark", "artist:bad artist"]

    refused = await pony(fake, "fluttershy, grimdark")
    by_artist = await pony(fake, "fluttershy by=bad_artist")  # V2 spelling of the same artist
    assert refused.ephemeral and "`grimdark`" in refused.original.content
    assert by_artist.ephemeral and "`artist:bad artist`" in by_artist.original.content
    assert await queued_jobs(redis) == []
    info = (await command(fake, "model info")).original.content
    assert "Blocked on this server: `grimdark`, `artist:bad artist`" in info

    unblocked = await command(
        fake, "model unblock", {"tags": "grimdark, gore"}, permissions=MANAGE_GUILD
    )
    assert "Unblocked `grimdark`" in unblocked.original.content
    assert "`gore` was not blocked" in unblocked.original.content
    allowed = await pony(fake, "fluttershy, grimdark")
    assert not allowed.ephemeral
    assert [job.tags for job in await queued_jobs(redis)] == ["fluttershy, grimdark"]
    assert json.loads(await stored(redis, "blocked")) == ["artist:bad artist"]


async def test_a_blocked_character_is_refused_in_its_short_form_and_nothing_is_queued(
    bot, fake, redis
):
    await command(fake, "model block", {"tags": "twilight sparkle"}, permissions=MANAGE_GUILD)

    short = await pony(fake, "twilight, unicorn", model="tiny-v2")
    underscored = await pony(fake, "pony twilight_sparkle", model="tiny")

    assert short.ephemeral
    assert "`twilight` (blocked: `twilight sparkle`)" in short.original.content
    assert underscored.ephemeral and "Not allowed on this server" in underscored.original.content
    assert await queued_jobs(redis) == []


async def test_a_refused_rating_with_punctuation_is_refused_outside_age_restricted_channels(
    bot, fake, redis
):
    for tags in ("solo, explicit.", "solo, rating:explicit", "solo questionable!"):
        itx = await pony(fake, tags)
        assert itx.ephemeral and "needs an age-restricted channel" in itx.original.content
    assert await queued_jobs(redis) == []
    allowed = await command(fake, "pony", {"tags": "solo, explicit."}, channel_id=NSFW_CHANNEL_ID)
    assert not allowed.ephemeral


async def test_the_queued_message_shows_the_caption_and_what_was_rewritten(bot, fake, redis):
    itx = await pony(fake, "Twilight Sparkle, artist:pierogarts, solo", model="tiny-v2")

    assert not itx.ephemeral
    assert "safe twilight by=pierogarts solo" in itx.original.content
    assert "`twilight sparkle` → `twilight`" in itx.original.content
    [job] = await queued_jobs(redis)
    assert job.prompt == "safe twilight by=pierogarts solo"


async def test_blocked_tags_belong_to_one_server(bot, fake, redis):
    await command(fake, "model block", {"tags": "grimdark"}, permissions=MANAGE_GUILD)

    elsewhere = await command(fake, "pony", {"tags": "grimdark"}, channel_id=OTHER_CHANNEL_ID)

    assert not elsewhere.ephemeral


@pytest.mark.parametrize("name", ["model block", "model unblock"])
async def test_blocking_needs_manage_server_and_a_server(bot, fake, redis, name):
    member = await command(fake, name, {"tags": "grimdark"}, permissions=0)
    in_dm = await command(fake, name, {"tags": "grimdark"}, dm=True, permissions=MANAGE_GUILD)

    assert member.ephemeral and "Manage Server" in member.original.content
    assert in_dm.ephemeral and "not in direct messages" in in_dm.original.content
    assert await redis.keys(KEYS.guild("*")) == []


async def test_block_without_tags_says_what_to_give(bot, fake, redis):
    itx = await command(fake, "model block", {"tags": " , "}, permissions=MANAGE_GUILD)

    assert itx.ephemeral and "Give the tags to block" in itx.original.content
    assert await redis.keys(KEYS.guild("*")) == []


# --- Redis down --------------------------------------------------------------------------------


async def test_without_redis_list_still_shows_the_registry_and_set_says_why(fake, settings):
    dead = settings.model_copy(
        update={
            "secrets": settings.secrets.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
        }
    )
    async with running_bot(dead, fake):
        listing = await command(fake, "model list")
        changed = await command(fake, "model set", {"model": "tiny-v2"}, permissions=MANAGE_GUILD)

    assert "`tiny`" in listing.original.content and "`tiny-v2`" in listing.original.content
    assert "Redis is unreachable" in listing.original.content
    assert changed.ephemeral
    assert "settings are unavailable" in changed.original.content


# --- the settings store ------------------------------------------------------------------------


async def test_admins_blocking_at_the_same_time_all_get_their_tags(redis):
    from bot import guild_settings

    tags = [f"tag {i}" for i in range(20)]
    await asyncio.gather(*(guild_settings.block(redis, KEYS, GUILD_ID, [t]) for t in tags))

    assert sorted((await guild_settings.load(redis, KEYS, GUILD_ID)).blocked_tags) == sorted(tags)


async def test_unreadable_settings_count_as_unset_and_pony_still_works(bot, fake, redis):
    await redis.hset(
        KEYS.guild(GUILD_ID), mapping={"model": "", "blocked": "{not json", "user_limit": "lots"}
    )

    queued = await pony(fake)

    assert not queued.ephemeral and "model **Tiny Pony**" in queued.original.content


async def test_the_user_limit_shares_the_servers_hash_without_touching_the_rest(redis):
    from bot import guild_settings

    await guild_settings.set_model(redis, KEYS, GUILD_ID, "tiny-v2")
    await guild_settings.set_user_limit(redis, KEYS, GUILD_ID, 2)
    assert (await guild_settings.load(redis, KEYS, GUILD_ID)).user_limit == 2

    await guild_settings.set_user_limit(redis, KEYS, GUILD_ID, None)
    settings = await guild_settings.load(redis, KEYS, GUILD_ID)
    assert settings.user_limit is None and settings.model == "tiny-v2"
