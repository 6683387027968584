"""While a job samples, its queued message shows "sampling n/N" with a small preview; the
result then replaces both."""

from __future__ import annotations

import pytest

from ponybot_testkit.world import CHANNEL_ID, USER_ID

pytestmark = pytest.mark.usefixtures("bot")


def with_progress(settings):
    worker = settings.config.worker.model_copy(update={"progress": True,
                                                       "progress_interval_s": 1.0})
    return settings.model_copy(update={"config": settings.config.model_copy(
        update={"worker": worker})})


async def test_the_queued_message_shows_progress_then_the_result(fake, settings, start_worker):
    itx = await fake.invoke("pony", {"tags": "luna, night", "steps": 60, "size": "portrait"},
                            channel_id=CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    await start_worker(settings_=with_progress(settings))

    def result_posted() -> bool:
        return any(a.filename.startswith("pony_") for a in itx.original.attachments)

    await fake.wait_for(result_posted, timeout=120)
    progress = [e for e in itx.original.edits if "sampling" in (e.get("content") or "")]
    assert progress, "no progress edit while 60 steps sampled"
    assert all(any(a.get("filename") == "progress.jpg" for a in e.get("attachments") or [])
               for e in progress)
    steps = [int(e["content"].split("sampling ")[1].split("/")[0]) for e in progress]
    assert steps == sorted(steps) and steps[-1] <= 60
    # The result replaced the preview and the progress text.
    assert [a.filename for a in itx.original.attachments if a.filename == "progress.jpg"] == []
    assert "sampling" not in itx.original.content
