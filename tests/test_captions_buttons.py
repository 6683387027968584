"""Re-roll, U and V check the caption again, as /pony does (ponybot_request/policy.py): a
picture drawn in an age-restricted channel, or before the server blocked one of its tags, is not
re-drawn where that is no longer allowed. Real discord.py against the fake Discord, real Redis,
the tiny pipeline and a tiny Real-ESRGAN net."""

from __future__ import annotations

import pytest

from ponybot_core.config import Config, LoadedConfig, UpscalerEntry
from ponybot_core.custom_ids import Action, custom_id
from ponybot_testkit.world import GUILD_ID, NSFW_CHANNEL_ID, USER_ID

MANAGE_GUILD = 1 << 5
BUTTONS = [(Action.REROLL, None), (Action.UPSCALE, 0), (Action.VARY, 0)]


@pytest.fixture(scope="session")
def tiny_upscaler(tmp_path_factory: pytest.TempPathFactory) -> UpscalerEntry:
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

    path = save_pth(realesrgan_state_dict(), tmp_path_factory.mktemp("esrgan") / "tiny-x4.pth")
    return UpscalerEntry(id="tiny-esrgan", name="Tiny ESRGAN", path=path)


@pytest.fixture
def settings(settings: LoadedConfig, tiny_upscaler: UpscalerEntry) -> LoadedConfig:
    """The tests' usual settings with the tiny upscaler, so results carry U buttons."""
    config = Config.model_validate({**settings.config.model_dump(),
                                    "upscalers": [tiny_upscaler.model_dump()]})
    return settings.model_copy(update={"config": config})


async def invoke(fake, name: str, options: dict, **context):
    itx = await fake.invoke(name, options, guild_id=GUILD_ID, channel_id=NSFW_CHANNEL_ID,
                            user_id=USER_ID, **context)
    await itx.wait_response(timeout=5)
    return itx


async def click(fake, message, action: Action, index: int | None):
    job_id = message.embeds[0]["footer"]["text"].removeprefix("job ")
    itx = await fake.click(message.id, custom_id(action, job_id, index), user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def set_age_restricted(fake, bot, restricted: bool) -> None:
    fake.add_channel(GUILD_ID, NSFW_CHANNEL_ID, name="after-dark", nsfw=restricted)
    await fake.wait_for(lambda: bot.get_channel(NSFW_CHANNEL_ID).is_nsfw() is restricted,
                        message="the channel update reached the bot")


def public_messages(fake) -> int:
    return sum(not m.ephemeral for m in fake.messages.values())


async def test_buttons_recheck_the_channel_and_the_servers_block_list(fake, bot, start_worker):
    await start_worker()
    asked = await invoke(fake, "pony", {"tags": "solo, explicit"})
    await fake.wait_for(lambda: bool(asked.original.attachments and asked.original.embeds),
                        timeout=30, message="the result")
    source = asked.original
    before = public_messages(fake)

    # The channel is no longer age-restricted: its `explicit` picture is not re-drawn here.
    await set_age_restricted(fake, bot, False)
    for action, index in BUTTONS:
        refused = await click(fake, source, action, index)
        assert refused.ephemeral, action
        assert "`explicit` needs an age-restricted channel" in refused.original.content
        assert "This picture can only be re-drawn in one" in refused.original.content

    # Age-restricted again, but the server has blocked one of the picture's tags since.
    await set_age_restricted(fake, bot, True)
    await invoke(fake, "model block", {"tags": "solo"}, permissions=MANAGE_GUILD)
    for action, index in BUTTONS:
        refused = await click(fake, source, action, index)
        assert refused.ephemeral, action
        assert "Not allowed on this server: `solo`" in refused.original.content
    assert public_messages(fake) == before  # nothing was queued

    # Once it is allowed again, the same button queues as usual.
    await invoke(fake, "model unblock", {"tags": "solo"}, permissions=MANAGE_GUILD)
    allowed = await click(fake, source, Action.REROLL, None)
    assert not allowed.ephemeral and "Queued" in allowed.original.content
