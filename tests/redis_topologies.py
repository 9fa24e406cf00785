"""Throwaway Redis topologies on loopback: a 3-master Cluster and a Sentinel-watched primary with replicas.

Real processes on free ports, each stopped by ``stop()``; every wait is bounded. Used by the topology
tests (tests/store/test_topology.py) and the chaos tests (tests/test_redis_topologies.py).
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis_server import REDIS_SERVER

REDIS_CLI = shutil.which("redis-cli")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_until(check: object, within: float, what: str) -> float:
    """Poll ``check()`` until true; seconds it took. Fails after ``within`` seconds."""
    started = time.monotonic()
    while True:
        try:
            if check():  # type: ignore[operator]
                return time.monotonic() - started
        except redis.RedisError:
            pass  # not up yet: that is what is being waited for
        if time.monotonic() - started > within:
            raise RuntimeError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.05)


class Process:
    """One redis-server (or sentinel) on 127.0.0.1."""

    def __init__(self, port: int, args: list[str], log: Path) -> None:
        assert REDIS_SERVER is not None, "redis-server is not on PATH"
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [REDIS_SERVER, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT
        )

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def wait_ping(self) -> None:
        with self.client(0.2) as c:
            wait_until(c.ping, 10, f"redis on port {self.port} ({self.log.read_text()[-500:]})")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


class Cluster:
    """``masters`` cluster-enabled servers joined by ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[Process] = []
        for _ in range(masters):
            port = cluster_port()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            args += ["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"]
            self.nodes.append(Process(port, args, self.dir / f"node-{port}.log"))

    def start(self) -> Cluster:
        for node in self.nodes:
            node.wait_ping()
        assert REDIS_CLI is not None, "redis-cli is not on PATH"
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for node in self.nodes:
            with node.client() as c:
                wait_until(lambda c=c: c.cluster("info")["cluster_state"] == "ok", 15, "cluster_state:ok")
        return self

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def node_id(self, node: Process) -> str:
        with node.client() as c:
            return str(c.execute_command("CLUSTER", "MYID").decode())

    def owner(self, slot: int) -> Process:
        with self.nodes[0].client() as c:
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"slot {slot} is not served")

    def slot_of(self, tag: str) -> int:
        with self.nodes[0].client() as c:
            return int(c.execute_command("CLUSTER", "KEYSLOT", tag))

    def begin_migration(self, slot: int, source: Process, target: Process) -> None:
        """IMPORTING on the target, MIGRATING on the source: clients asking for a key the source no
        longer has are sent to the target with ASK."""
        with target.client() as t:
            t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        with source.client() as s:
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def move_keys(self, slot: int, source: Process, target: Process) -> int:
        """MIGRATE every key of the slot from source to target; how many moved."""
        moved = 0
        with source.client(10) as s:
            while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
                s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
        return moved

    def end_migration(self, slot: int, target: Process) -> None:
        """SETSLOT NODE everywhere: the slot is the target's; the source answers MOVED from now on."""
        target_id = self.node_id(target)
        for node in [target, *(n for n in self.nodes if n is not target)]:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelGroup:
    """A primary, ``replicas`` replicas and three Sentinels watching it as ``master``."""

    def __init__(self, workdir: Path, replicas: int = 2, master: str = "gwmaster") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.master = master
        port = cluster_port()
        self.primary = Process(port, self._server_args(port), self.dir / f"redis-{port}.log")
        self.replicas = []
        for _ in range(replicas):
            rport = cluster_port()
            args = [*self._server_args(rport), "--replicaof", "127.0.0.1", str(port)]
            self.replicas.append(Process(rport, args, self.dir / f"redis-{rport}.log"))
        self.sentinels: list[Process] = []

    def _server_args(self, port: int) -> list[str]:
        # A directory of its own: a replica's full sync writes the primary's dataset to dump.rdb there,
        # and a later server started in the same directory would load it.
        data = self.dir / f"data-{port}"
        data.mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        return [*args, "--save", "", "--appendonly", "no"]

    def start(self) -> SentinelGroup:
        self.primary.wait_ping()
        for replica in self.replicas:
            replica.wait_ping()
            with replica.client() as c:
                wait_until(
                    lambda c=c: c.info("replication")["master_link_status"] == "up", 15, "replica sync"
                )
        for _ in range(3):
            port = cluster_port()
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.master} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.master} 1000\n"
                f"sentinel failover-timeout {self.master} 5000\n"
                f"sentinel parallel-syncs {self.master} 1\n"
            )
            self.sentinels.append(Process(port, [str(conf), "--sentinel"], self.dir / f"sentinel-{port}.log"))
        for sentinel in self.sentinels:
            sentinel.wait_ping()
        for sentinel in self.sentinels:  # each knows the replicas and the other Sentinels
            with sentinel.client() as c:
                wait_until(
                    lambda c=c: (
                        int(c.sentinel_master(self.master)["num-other-sentinels"]) == 2
                        and int(c.sentinel_master(self.master)["num-slaves"]) == len(self.replicas)
                    ),
                    20,
                    "sentinels to discover each other and the replicas",
                )
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master}/0"

    def current_primary_port(self) -> int:
        with self.sentinels[0].client() as c:
            _, port = c.sentinel_get_master_addr_by_name(self.master)
        return int(port)

    def node(self, port: int) -> Process:
        return next(n for n in [self.primary, *self.replicas] if n.port == port)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.replicas, self.primary]:
            process.stop()
