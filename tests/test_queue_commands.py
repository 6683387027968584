"""/queue: every command as a plain member, a server admin and a bot owner; fairness and
positions as users see them."""

from __future__ import annotations

import asyncio

import pytest

from ponybot_core.keys import Keys
from ponybot_testkit.world import (
    CHANNEL_ID,
    GUILD_ID,
    OTHER_CHANNEL_ID,
    OTHER_GUILD_ID,
    OTHER_USER_ID,
    OWNER_ID,
    USER_ID,
)

pytestmark = pytest.mark.usefixtures("bot")

MANAGE_GUILD = 1 << 5
ADMIN_ID = 5_000_000_000_000_009


async def pony(fake, *, user_id=USER_ID, channel_id=CHANNEL_ID, **options):
    options.setdefault("tags", "pinkie pie, party")
    itx = await fake.invoke("pony", options, channel_id=channel_id, user_id=user_id)
    await itx.wait_response(timeout=5)
    return itx


async def queue_cmd(fake, name, options=None, *, as_="admin", channel_id=CHANNEL_ID):
    user, permissions = {"admin": (ADMIN_ID, MANAGE_GUILD), "member": (USER_ID, 0),
                         "owner": (OWNER_ID, 0)}[as_]
    itx = await fake.invoke(f"queue {name}", options or {}, channel_id=channel_id, user_id=user,
                            permissions=permissions)
    await itx.wait_response(timeout=5)
    return itx


async def until(read, expected, within: float = 30.0) -> None:
    """Poll Redis until `await read()` returns `expected`."""
    deadline = asyncio.get_running_loop().time() + within
    while (value := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"still {value!r}"
        await asyncio.sleep(0.02)


async def queued_ids(redis) -> list[str]:
    return [Keys().job_id(k) for k in await redis.lrange(Keys().waiting(GUILD_ID), 0, -1)]


@pytest.mark.parametrize("command", ["show", "pause", "resume", "clear", "workers"])
async def test_plain_members_cannot_manage_the_queue(fake, command):
    itx = await queue_cmd(fake, command, as_="member")
    assert itx.ephemeral
    assert "Manage Server" in itx.original.content


async def test_a_plain_member_cannot_set_the_user_limit(fake):
    itx = await queue_cmd(fake, "limit", {"jobs": 1}, as_="member")
    assert "Manage Server" in itx.original.content


async def test_show_lists_the_servers_queue_in_order_with_positions(fake, redis):
    for _ in range(3):
        await pony(fake)
    await pony(fake, channel_id=OTHER_CHANNEL_ID, user_id=OTHER_USER_ID)
    ids = await queued_ids(redis)

    itx = await queue_cmd(fake, "show")

    text = itx.original.content
    assert itx.ephemeral
    # Positions are places in the whole queue: the other server's job runs second.
    lines = [f"#{n} `{i}`" for n, i in zip((1, 3, 4), ids, strict=True)]
    assert all(line in text for line in lines)
    assert [text.index(line) for line in lines] == sorted(text.index(line) for line in lines)
    other = [Keys().job_id(k) for k in await redis.lrange(Keys().waiting(OTHER_GUILD_ID), 0, -1)]
    assert other[0] not in text


async def test_only_owners_see_every_servers_queue(fake, redis):
    await pony(fake, channel_id=OTHER_CHANNEL_ID, user_id=OTHER_USER_ID)
    [other] = [Keys().job_id(k) for k in await redis.lrange(Keys().waiting(OTHER_GUILD_ID), 0, -1)]
    refused = await queue_cmd(fake, "show", {"everything": True}, as_="admin")
    assert "owners" in refused.original.content
    seen = await queue_cmd(fake, "show", {"everything": True}, as_="owner")
    assert other in seen.original.content


async def test_a_paused_server_keeps_its_jobs_and_pony_says_so_while_others_flow(
        fake, redis, start_worker):
    await queue_cmd(fake, "pause", {"scope": "server"})
    held = await pony(fake)
    assert "paused" in held.original.content
    await start_worker()
    elsewhere = await pony(fake, channel_id=OTHER_CHANNEL_ID, user_id=OTHER_USER_ID)
    await fake.wait_for(lambda: elsewhere.original.attachments, timeout=30)
    assert not held.original.attachments
    assert len(await queued_ids(redis)) == 1

    await queue_cmd(fake, "resume", {"scope": "server"})
    await fake.wait_for(lambda: held.original.attachments, timeout=30)


async def test_global_pause_is_for_bot_owners(fake, redis):
    refused = await queue_cmd(fake, "pause", {"scope": "global"}, as_="admin")
    assert "owners" in refused.original.content
    assert await redis.smembers(Keys().paused) == set()
    await queue_cmd(fake, "pause", {"scope": "global"}, as_="owner")
    assert await redis.smembers(Keys().paused) == {b"*"}
    await queue_cmd(fake, "resume", {"scope": "global"}, as_="owner")
    assert await redis.smembers(Keys().paused) == set()


async def test_clear_cancels_one_users_queued_jobs_and_edits_their_messages(fake, redis):
    mine = [await pony(fake) for _ in range(2)]
    theirs = await pony(fake, user_id=OTHER_USER_ID)

    itx = await queue_cmd(fake, "clear", {"user": USER_ID})

    # The admin's answer comes after the users' messages are edited: wait for both.
    await fake.wait_for(lambda: all("Cancelled" in m.original.content for m in mine)
                        and "Cancelled" in itx.original.content)
    assert "Cancelled 2" in itx.original.content
    assert "Cancelled" not in theirs.original.content
    assert len(await queued_ids(redis)) == 1


async def test_the_requester_cancels_with_the_button_and_others_cannot(fake, redis):
    job = await pony(fake)
    [button] = [c for row in job.original.components for c in row["components"]
                if "cancel" in c["custom_id"]]

    stranger = await fake.click(job.original.id, button["custom_id"], user_id=OTHER_USER_ID)
    await stranger.wait_response()
    assert stranger.ephemeral and "Only the person" in stranger.original.content
    assert len(await queued_ids(redis)) == 1

    own = await fake.click(job.original.id, button["custom_id"], user_id=USER_ID)
    await own.wait_response()
    assert "Cancelled job" in own.original.content
    await fake.wait_for(lambda: "Cancelled" in job.original.content)
    assert await queued_ids(redis) == []


async def test_an_admin_cancels_a_running_job_and_nothing_is_posted(fake, redis, start_worker):
    job = await pony(fake, steps=60)
    [key] = await redis.keys(Keys().job("*"))
    await start_worker()
    await until(lambda: redis.hget(key, "status"), b"running")

    itx = await queue_cmd(fake, "cancel", {"job": key.decode().rsplit(":", 1)[1]})

    assert "stops at the next sampling step" in itx.original.content
    await fake.wait_for(lambda: "Cancelled" in job.original.content, timeout=30)
    assert not job.original.attachments
    assert await redis.hget(key, "status") == b"cancelled"


async def test_the_user_limit_refuses_extra_jobs_with_the_users_current_jobs(fake, redis):
    await queue_cmd(fake, "limit", {"jobs": 2})
    await pony(fake)
    await pony(fake)
    refused = await pony(fake)
    assert refused.ephemeral
    assert "limit is 2" in refused.original.content
    for job_id in await queued_ids(redis):
        assert job_id in refused.original.content
    other = await pony(fake, user_id=OTHER_USER_ID)
    assert not other.ephemeral


async def test_workers_lists_live_workers(fake, redis, start_worker):
    await start_worker(name="gpu-box-0")
    await until(lambda: redis.exists(Keys().worker("gpu-box-0")), 1)
    itx = await queue_cmd(fake, "workers")
    assert "gpu-box-0" in itx.original.content


async def test_a_queued_message_shows_its_new_position_when_it_moves_up(fake, bot, redis):
    first, second, third, last = [await pony(fake) for _ in range(4)]
    assert "position **4**" in last.original.content
    for itx in (first, second, third):
        [button] = [c for row in itx.original.components for c in row["components"]
                    if "cancel" in c["custom_id"]]
        await (await fake.click(itx.original.id, button["custom_id"], user_id=USER_ID)) \
            .wait_response()
    positions = bot.get_cog("PositionsCog")
    positions.min_gap_s = 0

    assert await positions.update_positions() == 1
    assert "next up" in last.original.content
    assert await positions.update_positions() == 0  # nothing moved since


async def test_a_late_server_waits_at_most_one_job_behind_a_busy_one(fake, redis, start_worker):
    busy = [await pony(fake) for _ in range(10)]
    late = await pony(fake, channel_id=OTHER_CHANNEL_ID, user_id=OTHER_USER_ID)
    assert "position **2**" in late.original.content
    await start_worker()
    await fake.wait_for(lambda: late.original.attachments, timeout=60)
    finished_before_late = [i for i in busy if i.original.attachments]
    assert len(finished_before_late) <= 2  # the one running when it arrived, and one more
