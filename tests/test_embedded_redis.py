"""The embedded Redis of `ponybot up` is not open to every local process: a client needs the
generated password (in a 0600 file of a 0700 folder), and even with it CONFIG, DEBUG, MODULE,
REPLICAOF and ACL do not exist, so a leaked password still writes no file and loads no code.
The password is in no command line and no log line. Real redis-server, real `ponybot up`."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from ponybot_cli.redis_server import (
    CONFIG_FILE,
    PASSWORD_FILE,
    URL_FILE,
    DataFolderLock,
    RedisServer,
    running_url,
)
from ponybot_testkit.fake_discord import FakeDiscord
from ponybot_testkit.world import fake_world
from tests.test_cli_up import (
    Up,
    bot_connected,
    command_line,
    descendants,
    ponybot_up,
    write_config,
)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "data", secured=True)
    server.start()
    yield server
    server.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_client_without_the_password_is_refused(secured: RedisServer) -> None:
    anonymous = redis.Redis.from_url(secured.public_url)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.set("job", "injected")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(secured.public_url, password="guessed").ping()
    assert redis.Redis.from_url(secured.url).ping()


@pytest.mark.parametrize("command", [
    ("CONFIG", "SET", "dir", "/tmp"),
    ("CONFIG", "GET", "requirepass"),
    ("DEBUG", "SLEEP", "0"),
    ("MODULE", "LOAD", "/tmp/evil.so"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("SLAVEOF", "127.0.0.1", "1"),
    ("ACL", "SETUSER", "default", "nopass"),
], ids=lambda c: " ".join(c[:2]))
def test_file_writing_and_code_loading_commands_are_refused_even_with_the_password(
        secured: RedisServer, command: tuple[str, ...]) -> None:
    client = redis.Redis.from_url(secured.url)
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        client.execute_command(*command)
    assert client.ping()


def test_the_password_is_private_and_in_no_command_line(secured: RedisServer) -> None:
    data = secured.data_dir
    assert secured.password and len(secured.password) >= 40
    assert (data / PASSWORD_FILE).read_text().strip() == secured.password
    assert mode(data / PASSWORD_FILE) == 0o600
    assert mode(data / CONFIG_FILE) == 0o600
    assert mode(data) == 0o700  # the AOF holds live interaction tokens
    assert (data / URL_FILE).read_text().strip() == secured.public_url
    assert secured.process is not None
    assert secured.password not in command_line(secured.process.pid)


def test_the_password_outlives_a_restart_and_a_loosened_file_is_tightened(
        secured: RedisServer) -> None:
    password = secured.password
    (secured.data_dir / PASSWORD_FILE).chmod(0o644)
    secured.stop()
    secured.start()

    assert secured.password == password  # running children keep working
    assert mode(secured.data_dir / PASSWORD_FILE) == 0o600


def test_a_url_file_without_the_lock_is_stale(secured: RedisServer) -> None:
    assert running_url(secured.data_dir) is None  # no `ponybot up` holds the folder
    lock = DataFolderLock(secured.data_dir)
    # What `up` does: the lock first (which clears what a killed `up` left), then Redis.
    secured.stop()
    lock.acquire()
    try:
        secured.start()
        assert running_url(secured.data_dir) == secured.url
    finally:
        lock.release()
    assert running_url(secured.data_dir) is None


# --- `ponybot up`'s Redis ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def module_fake() -> AsyncIterator[FakeDiscord]:
    fake = fake_world()
    await fake.start()
    yield fake
    await fake.close()


@dataclass
class RunningUp:
    up: Up
    data_dir: Path
    log_file: Path


@pytest.fixture(scope="module")
async def running_up(module_fake: FakeDiscord,
                     tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningUp]:
    """One `ponybot up` (Redis and the bot) at DEBUG, with a log file, for the whole module."""
    folder = tmp_path_factory.mktemp("up")
    config = write_config(folder, folder / "no-model", module_fake)
    log_file = folder / "up.log"
    async with ponybot_up(config, "--workers", "0", "--log-file", str(log_file),
                          PONYBOT_LOG_LEVEL="DEBUG") as up:
        await bot_connected(module_fake, up)
        yield RunningUp(up, folder / "redis-data", log_file)
        with contextlib.suppress(ProcessLookupError):
            await up.stop()


async def test_up_s_redis_refuses_a_client_without_the_password(running_up: RunningUp) -> None:
    public = (running_up.data_dir / URL_FILE).read_text().strip()
    anonymous = AsyncRedis.from_url(public)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await anonymous.keys("*")
    finally:
        await anonymous.aclose()


async def test_up_s_redis_refuses_config_set_dir_even_with_the_password(
        running_up: RunningUp) -> None:
    url = running_url(running_up.data_dir)
    assert url is not None
    client = AsyncRedis.from_url(url)
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
            await client.execute_command("CONFIG", "SET", "dir", "/tmp")
        assert await client.ping()
    finally:
        await client.aclose()


async def test_up_s_password_is_in_no_command_line_and_no_log_line(
        running_up: RunningUp) -> None:
    data, up = running_up.data_dir, running_up.up
    password = (data / PASSWORD_FILE).read_text().strip()
    assert mode(data / PASSWORD_FILE) == 0o600
    processes = {up.pid, *descendants(up.pid)}
    assert len(processes) >= 3  # up, redis-server, the bot
    assert all(password not in command_line(pid) for pid in processes)

    logged = running_up.log_file.read_text()
    assert " DEBUG bot " in logged  # the children's lines are in it, at DEBUG
    assert password not in up.text
    assert password not in logged
    assert password not in (data / "redis.log").read_text()
