"""A local Redis Cluster (three masters, three replicas) for the tests and the benches.

Six ``redis-server`` processes with ``cluster-enabled yes`` and append-only
files in one directory, joined by ``redis-cli --cluster create``. A short
``cluster-node-timeout`` lets a replica take over within seconds of its
master's death.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from capability_router.errors import EmpError
from emp_tasks.local_redis import STREAM_NODE_MAX_BYTES, port_is_free


def cluster_binaries() -> tuple[str, str] | None:
    """(redis-server, redis-cli) on PATH, or None."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


def _free_ports(count: int) -> list[int]:
    """``count`` ports whose cluster bus ports (+10000) are free too."""
    for _ in range(200):
        base = random.randrange(20000, 45000, 10)
        ports = list(range(base, base + count))
        if all(port_is_free(p) and port_is_free(p + 10000) for p in ports):
            return ports
    raise EmpError("no free ports for a local Redis Cluster")


@dataclass
class LocalCluster:
    """Six local nodes; ``url`` names the first, ``seeds`` all of them.

    :param node_timeout_ms: ``cluster-node-timeout``: how long a master may be
        unreachable before its replica takes over.
    """

    data_dir: Path
    masters: int = 3
    node_timeout_ms: int = 1500
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)
    _server: str = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def seeds(self) -> str:
        """Every node as ``host:port,...``: the value of ``EMP_REDIS_CLUSTER``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this cluster."""
        return {"EMP_REDIS_URL": self.url, "EMP_REDIS_CLUSTER": self.seeds}

    def start(self, timeout: float = 60.0) -> LocalCluster:
        binaries = cluster_binaries()
        if binaries is None:
            raise EmpError("redis-server and redis-cli are needed for a local cluster")
        server, cli = binaries
        self.ports = _free_ports(self.masters * 2)
        self._server = server
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping(), timeout)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )
        self.wait_ok(timeout)
        self.wait_replicas_online(timeout)
        return self

    def wait_replicas_online(self, timeout: float = 60.0) -> None:
        """Wait until every live master has an in-sync replica (first sync done)."""
        def synced() -> bool:
            for port in self.master_ports():
                info = redis.Redis(port=port, decode_responses=True).info("replication")
                states = [v.get("state") for k, v in info.items() if k.startswith("slave")]
                if "online" not in states:
                    return False
            return True
        self._wait(synced, timeout)

    def _spawn(self, port: int) -> None:
        node_dir = self.data_dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [self._server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES),
             "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

    def restart(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again: it rejoins (as a replica, if its slots moved on)."""
        self._spawn(port)
        self._wait(lambda: redis.Redis(port=port).ping(), timeout)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until every live node says cluster_state:ok and agrees on the masters."""
        def ok() -> bool:
            live = [p for p in self.ports if self.processes[p].poll() is None]
            for port in live:
                info = redis.Redis(port=port, decode_responses=True).cluster("info")
                if info.get("cluster_state") != "ok":
                    return False
            return len(self.master_ports()) == self.masters
        self._wait(ok, timeout)

    def master_ports(self) -> list[int]:
        """Ports of live masters, as the live nodes see them."""
        masters: set[int] = set()
        for port in self.ports:
            if self.processes[port].poll() is not None:
                continue
            role = redis.Redis(port=port, decode_responses=True).execute_command("ROLE")
            if role[0] == "master":
                masters.add(port)
        return sorted(masters)

    def replica_ports(self, master_port: int) -> list[int]:
        """Ports of the replicas a master streams to."""
        role = redis.Redis(port=master_port, decode_responses=True).execute_command("ROLE")
        return [int(replica[1]) for replica in role[2]]

    def port_of_slot(self, slot: int) -> int:
        """Port of the live master serving ``slot``."""
        for port in self.master_ports():
            for start, end, master, *_ in redis.Redis(port=port).execute_command("CLUSTER SLOTS"):
                if start <= slot <= end and int(master[1]) in self.master_ports():
                    return int(master[1])
        raise EmpError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (no failover handshake: its replica must detect the death)."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the replicas, then the masters.

        A master told to shut down waits (up to 10 s) for replicas still
        catching up; stopped together, each master waited on replicas that
        were stopping too (a whole-cluster stop took 30 s).
        """
        try:
            masters = set(self.master_ports())
        except (redis.RedisError, OSError):
            masters = set()
        replicas = [port for port in self.processes if port not in masters]
        self._stop_ports(replicas)
        self._stop_ports([port for port in self.processes if port in masters])

    def _stop_ports(self, ports: list[int]) -> None:
        processes = [self.processes[port] for port in ports]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    @staticmethod
    def _wait(predicate, timeout: float) -> None:  # noqa: ANN001 - a callable
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        raise EmpError(f"local cluster not ready in {timeout} s ({last})")
