"""The bot stays up and says what is wrong when its dependencies are not there."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CHANNEL_ID, GUILD_ID, USER_ID, running_bot


async def test_unreachable_redis_is_reported_and_the_bot_keeps_running(fake, settings, redis):
    dead = settings.model_copy(update={"secrets": settings.secrets.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0"})})
    async with running_bot(dead, fake):
        for _ in range(2):
            itx = await fake.invoke("pony", {"tags": "pony"}, guild_id=GUILD_ID,
                                    channel_id=CHANNEL_ID, user_id=USER_ID)
            await itx.wait_response(timeout=5)
            assert itx.ephemeral
            assert "queue is unavailable" in itx.original.content


def test_the_bot_process_never_imports_the_ml_stack():
    code = (
        "import sys, bot.__main__, bot.app, cogs.pony, bot.tags, bot.options\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'spandrel')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
