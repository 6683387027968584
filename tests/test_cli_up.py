"""`ponybot up` as real processes: the embedded redis-server, the bot (connected to the fake
Discord) and a worker. Whatever stops it, no child is left behind; its first lines say which
config, which Redis and which models. On day one it stops at once, in one line, on what only
the operator can fix (a refused token, an unwritable data folder, another `up` in the same
folder); it restarts crashes with growing pauses and gives up on a crash loop with a summary;
a `kill -9` leaves nothing that makes `check` or the next `up` believe it still runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from ponybot_cli.doctor import check_redis
from ponybot_cli.redis_server import PASSWORD_FILE, free_port, running_url
from ponybot_core.config import LoadedConfig, Secrets, load_config
from ponybot_core.heartbeat import read_heartbeats
from ponybot_core.keys import Keys
from ponybot_core.logs import masked_url
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.world import BOT_TOKEN

T = TypeVar("T")


def write_config(folder: Path, pipeline_dir: Path, fake: FakeDiscord, *,
                 data_dir: str = "redis-data") -> Path:
    path = folder / "config.toml"
    path.write_text(f"""default_model = "tiny"

[discord]
api_base = "{fake.api_base}"
gateway_url = "{fake.gateway_url}"

[redis]
data_dir = "{data_dir}"

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
            stat_line = (entry / "stat").read_text()
            ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
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
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


@dataclass
class Up:
    """A `ponybot up` process and every line it printed (its own and its children's)."""

    process: asyncio.subprocess.Process
    lines: list[str]
    reader: asyncio.Task[None]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def exit_status(self, *, guard_s: float = 120) -> int:
        """Its exit status once it ends by itself (`guard_s` only stops a broken test)."""
        code = await asyncio.wait_for(self.process.wait(), guard_s)
        await asyncio.wait_for(self.reader, 10)
        return code

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return await self.exit_status(guard_s=60)

    async def meanwhile(self, waiting: Awaitable[T]) -> T:
        """What `waiting` gives, while `up` runs; if `up` ends first, fail at once."""
        wanted = asyncio.ensure_future(waiting)
        ended = asyncio.ensure_future(self.process.wait())
        await asyncio.wait({wanted, ended}, return_when=asyncio.FIRST_COMPLETED)
        if wanted.done():
            ended.cancel()
            return wanted.result()
        wanted.cancel()
        raise AssertionError(f"ponybot up ended with {self.process.returncode}")


def up_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "PONYBOT_START_FAULT", "PONYBOT_LOG_LEVEL")}
    env.update(DISCORD_TOKEN=BOT_TOKEN, OMP_NUM_THREADS="1", PONYBOT_LOG_LEVEL="INFO")
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def ponybot_up(config: Path, *args: str, **env: str) -> AsyncIterator[Up]:
    """`ponybot up --config CONFIG ARGS...` with `env` over the test's environment; killed at
    the end if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ponybot_cli", "up", "--config", str(config), *args,
        env=up_environment(**env), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []

    async def read_lines() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            lines.append(line.decode(errors="replace").rstrip())

    up = Up(process, lines, asyncio.create_task(read_lines()))
    try:
        yield up
    except BaseException as exc:
        exc.add_note("ponybot up printed:\n" + up.text)
        raise
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(up.reader, 10)


def settings_for(config: Path) -> LoadedConfig:
    return LoadedConfig(config=load_config(config), secrets=Secrets(DISCORD_TOKEN=BOT_TOKEN),
                    path=config)


async def bot_connected(fake: FakeDiscord, up: Up, *, sessions_before: int = 0) -> None:
    """The bot of `up` is on the fake's gateway (a session after the first
    `sessions_before`)."""
    await up.meanwhile(fake.wait_for(
        lambda: any(s.ready and s.connected for s in fake.sessions[sessions_before:]),
        timeout=60, message="a bot on the gateway"))


@pytest.fixture
def no_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
async def test_up_leaves_no_child_behind(fake, tiny_pipeline_dir: Path, tmp_path: Path,
                                         stop: signal.Signals) -> None:
    config = write_config(tmp_path, tiny_pipeline_dir, fake)
    async with ponybot_up(config) as up:
        # 1. Everything runs: the bot is on the gateway, the worker beats in the embedded Redis.
        await bot_connected(fake, up)
        data_dir = tmp_path / "redis-data"
        url = await fake.wait_for(lambda: running_url(data_dir), timeout=30,
                                  message="the embedded Redis")
        redis = Redis.from_url(url)
        try:
            await up.meanwhile(fake.wait_for(lambda: read_heartbeats(redis, Keys()),
                                             timeout=120, message="the worker's first heartbeat"))
        finally:
            await redis.aclose()
        children = descendants(up.pid)
        assert len(children) >= 3  # redis-server, the bot, the worker
        # The Redis password reaches the children by their environment, never argv.
        password = (data_dir / PASSWORD_FILE).read_text().strip()
        assert all(password not in command_line(pid) for pid in {up.pid, *children})

        # 2. Stopped: nothing it started outlives it.
        code = await up.stop(stop)
        await fake.wait_for(lambda: not any(running(pid) for pid in children), timeout=30,
                            message="every child of `ponybot up` to exit")

    assert password not in up.text
    assert f"config {config}" in up.text
    assert "Redis redis://:***@127.0.0.1:" in up.text and "(embedded, data in" in up.text
    assert "models available: tiny" in up.text
    assert f"✘ gone: not found: {tmp_path / 'models/gone'}" in up.text
    assert "voice will NOT be supported" not in up.text
    if stop is signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0
        assert f"stopping ({stop.name})" in up.text and "stopped" in up.text


# --- what stops `up` before it starts anything ---------------------------------------------------


async def test_a_refused_token_stops_up_at_once_with_one_line(fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)

    async with ponybot_up(config, "--workers", "0", DISCORD_TOKEN="not-the-token") as up:
        code = await up.exit_status()

    assert code == 2
    [line] = up.lines
    assert "cannot start: token: Discord refused the token (401)" in line
    assert "export the new one as DISCORD_TOKEN" in line
    assert [path for _, path, _ in fake.requests if path.endswith("/users/@me")] == \
        ["/users/@me"]  # one attempt
    assert not (tmp_path / "redis-data" / "url").exists()  # no Redis, no child started


async def test_without_a_network_up_stops_at_once_with_one_line(fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)
    nowhere = f"http://127.0.0.1:{free_port()}/api/v10"
    config.write_text(config.read_text().replace(fake.api_base, nowhere))

    async with ponybot_up(config, "--workers", "0") as up:
        code = await up.exit_status()

    assert code == 1  # may pass by itself: a service manager retries
    [line] = up.lines
    assert f"cannot start: token: cannot reach {nowhere}: " in line
    assert line.endswith("→ check the network (or discord.api_base in the config)")


@pytest.mark.parametrize("blocked_by", ["a file", "a read-only folder"])
async def test_an_unwritable_data_folder_stops_up_at_once(fake, tmp_path: Path,
                                                          blocked_by: str) -> None:
    if blocked_by == "a file":
        (tmp_path / "blocker").write_text("not a folder")
        data_dir = tmp_path / "blocker" / "redis-data"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "locked").mkdir()
        (tmp_path / "locked").chmod(stat.S_IRUSR | stat.S_IXUSR)
        data_dir = tmp_path / "locked" / "redis-data"
    config = write_config(tmp_path, tmp_path / "no-model", fake, data_dir=str(data_dir))

    async with ponybot_up(config, "--workers", "0") as up:
        code = await up.exit_status()

    assert code == 2
    [line] = up.lines
    assert f"cannot start: data: {data_dir} is not a writable folder" in line
    assert "set redis.data_dir in the config" in line
    assert fake.requests == []  # stopped before it even asked Discord


async def test_an_unreachable_redis_url_stops_up_at_once_with_the_password_masked(
        fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"

    async with ponybot_up(config, "--workers", "0", REDIS_URL=url) as up:
        code = await up.exit_status()

    assert code == 1  # may pass by itself: a service manager retries
    [line] = up.lines
    assert f"cannot start: redis: {masked_url(url)}: unreachable" in line
    assert "hunter2" not in line


# --- children that die ---------------------------------------------------------------------------


async def test_a_crash_loop_backs_off_doubling_then_gives_up_with_a_summary(
        fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)

    async with ponybot_up(config, "--workers", "0", "--restart-delay", "0.01",
                          "--max-crashes", "3", PONYBOT_START_FAULT="bot") as up:
        code = await up.exit_status()

    assert code == 1
    assert up.text.count("starting bot") == 3
    restarts = [line for line in up.lines if "bot crashed (exit status 1)" in line]
    assert len(restarts) == 2
    assert "1 time(s) in a row; restarting in 0.01 s (`up` gives up at 3)" in restarts[0]
    assert "2 time(s) in a row; restarting in 0.02 s" in restarts[1]
    assert restarts[0].endswith("InjectedStartFault: bot: crash injected by PONYBOT_START_FAULT")
    [summary] = [line for line in up.lines if "giving up" in line]
    assert "bot crashed 3 times in a row (last: exit status 1, last line: " \
           "ponybot_core.processes.InjectedStartFault: bot: crash injected by " \
           "PONYBOT_START_FAULT); giving up" in summary
    assert up.lines[-1].endswith("stopped")
    assert not (tmp_path / "redis-data" / "url").exists()  # the embedded Redis was stopped


async def test_a_child_reporting_a_problem_only_the_operator_can_fix_is_not_restarted(
        fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)

    async with ponybot_up(config, "--workers", "0", "--restart-delay", "0.01",
                          PONYBOT_START_FAULT="bot=config") as up:
        code = await up.exit_status()

    assert code == 2
    assert up.text.count("starting bot") == 1
    [line] = [line for line in up.lines if "not restarting it" in line]
    assert "bot stopped on a problem only you can fix (exit status 2): bot: configuration " \
           "problem injected by PONYBOT_START_FAULT — not restarting it" in line


async def test_the_bot_exits_2_in_one_line_when_discord_refuses_its_token(
        fake, tmp_path: Path, redis_server) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(config),
        env=up_environment(DISCORD_TOKEN="revoked", REDIS_URL=redis_server.url,
                           PONYBOT_LOG_LEVEL="WARNING"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(bot.communicate(), 60)

    assert bot.returncode == 2, out.decode()
    assert out.decode().splitlines() == [
        "bot: Discord refused the token (401): reset it in the developer portal "
        "(Bot → Reset Token) and export the new one as DISCORD_TOKEN"]


# --- one `up` per data folder --------------------------------------------------------------------


async def test_a_second_up_in_the_same_data_folder_is_refused_naming_the_first(
        fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)

    async with ponybot_up(config, "--workers", "0") as first:
        await bot_connected(fake, first)
        async with ponybot_up(config, "--workers", "0") as second:
            code = await second.exit_status()
        assert first.process.returncode is None

        assert code == 2
        [line] = second.lines
        assert f"another `ponybot up` (pid {first.pid}) is running with the data folder " \
               f"{tmp_path / 'redis-data'}: stop it first" in line
        assert len(fake.sessions) == 1  # no second bot on the token
        assert await first.stop() == 0


async def test_after_up_is_killed_check_says_not_running_and_a_new_up_starts(
        fake, tmp_path: Path, no_redis_url: None) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)
    settings = settings_for(config)

    async with ponybot_up(config, "--workers", "0") as first:
        await bot_connected(fake, first)
        assert (await check_redis(settings)).status == "ok"  # the running one, password and all
        children = descendants(first.pid)
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        await fake.wait_for(lambda: not any(running(pid) for pid in children), timeout=30,
                            message="every child of the killed `ponybot up` to exit")

    assert (tmp_path / "redis-data" / "url").exists()  # left behind by the kill
    finding = await check_redis(settings)
    assert finding.status == "ok"
    assert finding.detail.startswith("ponybot up is not running: it starts the embedded Redis")

    sessions_before = len(fake.sessions)
    async with ponybot_up(config, "--workers", "0") as second:
        await bot_connected(fake, second, sessions_before=sessions_before)
        finding = await check_redis(settings)
        assert finding.status == "ok" and finding.detail.endswith(", AOF on")
        assert await second.stop() == 0


# --- what `up` prints ----------------------------------------------------------------------------


async def test_a_log_file_gets_every_line_and_rotates(fake, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "no-model", fake)
    log_file = tmp_path / "logs" / "up.log"

    async with ponybot_up(config, "--workers", "0", "--log-file", str(log_file),
                          "--log-file-mb", str(512 / 1024**2), "--log-file-backups", "50") as up:
        await bot_connected(fake, up)
        assert await up.stop() == 0

    rotated = sorted(log_file.parent.glob("up.log.*"), key=lambda p: int(p.suffix[1:]))
    assert len(rotated) >= 2  # 512 bytes per file: it rotated
    # Oldest first: up.log.N ... up.log.1, then up.log.
    written = "".join(f.read_text() for f in [*reversed(rotated), log_file]).splitlines()
    # The same lines as on the terminal: up's own and the bot's, in order.
    assert written == up.lines
    assert any(" bot bot: config " in line for line in written)
    assert written[-1].endswith("stopped")


def test_hub_lines_are_printed_once_and_the_voice_warning_not_at_all() -> None:
    import subprocess

    # As in the worker: logging first, then the hub's modules (diffusers imports them).
    code = ("from ponybot_core.logs import setup_logging; setup_logging('worker'); "
            "import logging, discord, huggingface_hub.file_download; "
            "logging.getLogger('huggingface_hub.file_download').warning('hub says hi'); "
            "discord.Client(intents=discord.Intents(guilds=True))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=up_environment(), check=True, timeout=60).stderr

    [hub_line] = [line for line in out.splitlines() if "hub says hi" in line]
    assert hub_line.endswith(" WARNING worker huggingface_hub.file_download: hub says hi")
    assert "voice will NOT be supported" not in out
