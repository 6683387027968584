"""The world the tests and benches share: who is who on the fake Discord, the tiny config,
a valid job, and a bot logged in to the fake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from ponybot_core.config import (
    CaptionProfile,
    Config,
    LoadedConfig,
    ModelEntry,
    Sampler,
    UploadsConfig,
)
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.job import Job
from ponybot_testkit.fake_discord import FakeDiscord

if TYPE_CHECKING:
    from bot.app import PonyBot

BOT_TOKEN = "test-bot-token"
APPLICATION_ID = 1_000_000_000_000_001
BOT_USER_ID = 1_000_000_000_000_001
OWNER_ID = 2_000_000_000_000_001
GUILD_ID = 3_000_000_000_000_001
OTHER_GUILD_ID = 3_000_000_000_000_002
CHANNEL_ID = 4_000_000_000_000_001
NSFW_CHANNEL_ID = 4_000_000_000_000_002
OTHER_CHANNEL_ID = 4_000_000_000_000_003
USER_ID = 5_000_000_000_000_001
OTHER_USER_ID = 5_000_000_000_000_002


def fake_world() -> FakeDiscord:
    """Two servers (one with an age-restricted channel), two users and the bot's owner; not
    started yet."""
    fake = FakeDiscord(bot_token=BOT_TOKEN, application_id=APPLICATION_ID,
                       bot_user_id=BOT_USER_ID, owner_id=OWNER_ID)
    fake.add_guild(GUILD_ID, name="Ponyville", owner_id=OWNER_ID)
    fake.add_channel(GUILD_ID, CHANNEL_ID, name="general", nsfw=False)
    fake.add_channel(GUILD_ID, NSFW_CHANNEL_ID, name="after-dark", nsfw=True)
    fake.add_guild(OTHER_GUILD_ID, name="Canterlot", owner_id=OTHER_USER_ID)
    fake.add_channel(OTHER_GUILD_ID, OTHER_CHANNEL_ID, name="art", nsfw=False)
    fake.add_user(USER_ID, name="applebloom")
    fake.add_user(OTHER_USER_ID, name="scootaloo")
    return fake


def make_job(**overrides: object) -> Job:
    """A valid job for the tiny model; tests override what they are about."""
    fields: dict[str, object] = dict(
        application_id=1, interaction_id=2, interaction_token="tok", guild_id=3, channel_id=4,
        user_id=5, model_id="tiny", tags="pony", prompt="pony, solo", negative_prompt="",
        seed=1, steps=2, cfg=7.5, sampler=Sampler.DDIM, width=64, height=64,
    )
    fields.update(overrides)
    return Job.model_validate(fields)


def tiny_config(pipeline_dir: Path, fake: FakeDiscord | None = None, **overrides: object) -> Config:
    """The project's config shape with the tiny model and tiny sizes, talking to the fake."""
    raw: dict[str, object] = {
        "default_model": "tiny",
        "models": [
            ModelEntry(id="tiny", name="Tiny Pony", path=pipeline_dir,
                       description="random weights for tests",
                       caption=CaptionProfile(score_tag="scr100",
                                              sfw_negative_tags=["explicit"])).model_dump(),
            ModelEntry(id="tiny-v2", name="Tiny Pony V2", path=pipeline_dir,
                       caption=CaptionProfile(separator=" ", underscores=True, replacements=[
                           ("twilight sparkle", "twilight"), ("artist:", "by="), (":", "=")],
                       )).model_dump(),
        ],
        "defaults": {"steps": 2, "cfg": 7.5, "sampler": "ddim", "size": "square", "count": 1},
        "sizes": {
            "square": {"width": 64, "height": 64},
            "portrait": {"width": 64, "height": 96},
            "landscape": {"width": 96, "height": 64},
        },
        # Progress edits are tested on their own (test_live_progress.py): elsewhere they would
        # make what a message shows depend on how fast this machine samples.
        "worker": {"device": "cpu", "max_batch": 1, "block_ms": 100, "progress": False},
        "queue": {"max_attempts": 3, "lease_s": 2.0, "result_ttl_s": 3600, "user_limit": 50},
        "discord": {"owners": [OWNER_ID]},
    }
    if fake is not None:
        raw["discord"] = {"api_base": fake.api_base, "gateway_url": fake.gateway_url,
                          "owners": [OWNER_ID]}
        # The fake serves attachments from 127.0.0.1 as well as Discord's CDN hosts would.
        raw["uploads"] = {"hosts": [*UploadsConfig().hosts, fake.base_url]}
    raw.update(overrides)
    return Config.model_validate(raw)


@contextlib.asynccontextmanager
async def running_bot(settings: LoadedConfig, fake: FakeDiscord) -> AsyncIterator[PonyBot]:
    from bot.app import PonyBot
    from ponybot_core.redis_client import bot_redis, redis_target

    target = redis_target(settings)  # a URL, or [redis.sentinel]'s sentinels
    assert target
    use_endpoints(settings.config.discord)
    bot = PonyBot(settings, bot_redis(target))
    await bot.login(BOT_TOKEN)
    task = asyncio.create_task(bot.connect(reconnect=False))
    try:
        await fake.wait_for_bot(timeout=10)
        await fake.wait_for_commands(timeout=10)
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 5)
