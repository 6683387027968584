"""`ponybot up` as real processes: the embedded redis-server, the bot (connected to the fake
Discord) and a worker. Whatever stops it, no child is left behind; its first lines say which
config, which Redis and which models."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ponybot_core.heartbeat import read_heartbeats
from ponybot_core.keys import Keys
from ponybot_testkit.world import BOT_TOKEN


def write_config(folder: Path, pipeline_dir: Path, fake) -> Path:
    path = folder / "config.toml"
    path.write_text(f"""default_model = "tiny"

[discord]
api_base = "{fake.api_base}"
gateway_url = "{fake.gateway_url}"

[redis]
data_dir = "redis-data"

[worker]
device = "cpu"
block_ms = 200
progress = false

[[models]]
id = "tiny"
name = "Tiny Pony"
path = "{pipeline_dir}"

[[models]]
id = "gone"
name = "Gone Pony"
path = "models/gone"
hub_repo = "AstraliteHeart/pony-diffusion"
""")
    return path


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
async def test_up_leaves_no_child_behind(fake, tiny_pipeline_dir: Path, tmp_path: Path,
                                         stop: signal.Signals) -> None:
    config = write_config(tmp_path, tiny_pipeline_dir, fake)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DISCORD_TOKEN=BOT_TOKEN, OMP_NUM_THREADS="1", PONYBOT_LOG_LEVEL="INFO")
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ponybot_cli", "up", "--config", str(config), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert up.stdout is not None
    logs: list[str] = []

    async def read_logs() -> None:
        assert up.stdout is not None
        async for line in up.stdout:
            logs.append(line.decode(errors="replace").rstrip())

    reader = asyncio.create_task(read_logs())
    try:
        # 1. Everything runs: the bot is on the gateway, the worker beats in the embedded Redis.
        await fake.wait_for_bot(timeout=60)
        url_file = tmp_path / "redis-data" / "url"
        await fake.wait_for(url_file.exists, timeout=30, message="the embedded Redis")
        redis = Redis.from_url(url_file.read_text().strip())
        try:
            await fake.wait_for(lambda: read_heartbeats(redis, Keys()), timeout=120,
                                message="the worker's first heartbeat")
        finally:
            await redis.aclose()
        children = descendants(up.pid)
        assert len(children) >= 3  # redis-server, the bot, the worker

        # 2. Stopped: nothing it started outlives it.
        up.send_signal(stop)
        code = await asyncio.wait_for(up.wait(), 60)
        await fake.wait_for(lambda: not any(running(pid) for pid in children), timeout=30,
                            message="every child of `ponybot up` to exit")
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        await asyncio.wait_for(reader, 10)

    text = "\n".join(logs)
    assert f"config {config}" in text
    assert "Redis redis://127.0.0.1:" in text and "(embedded, data in" in text
    assert "models available: tiny" in text
    assert f"✘ gone: not found: {tmp_path / 'models/gone'}" in text
    if stop is signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0
        assert f"stopping ({stop.name})" in text and "stopped" in text
