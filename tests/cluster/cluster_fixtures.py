"""Fixtures of the cluster tests: a real local Redis Cluster (three masters, three replicas)
per test module, clients, a Celery app and workers on it. Test modules star-import them
(a conftest.py here would shadow tests/conftest.py, which test modules import by name)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capability_router.cluster import CLUSTER_ENV, cluster_client
from capability_router.keys import Keys, idle_workers
from conftest import ServerProcess, WorkerProcess
from emp_tasks.app import create_app
from emp_tasks.local_cluster import LocalCluster, cluster_binaries

__all__ = ["cluster", "cclient", "pools", "capp", "start_cluster_worker", "ClusterWorker",
           "start_cluster_server"]

#: Pool names tried, in order, for pools whose slots live on different masters.
CANDIDATE_POOLS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if cluster_binaries() is None:
        pytest.skip("redis-server and redis-cli are not on PATH: no local Redis Cluster")
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), node_timeout_ms=1500).start()
    with pytest.MonkeyPatch.context() as patch:
        # Every client this process and its children make now routes by slot.
        patch.setenv(CLUSTER_ENV, local.seeds)
        patch.setenv("EMP_REDIS_URL", local.url)
        yield local
    local.stop()


@pytest.fixture
def cclient(cluster: LocalCluster):  # noqa: ANN201 - a RedisCluster
    client = cluster_client(cluster.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def pools(cluster: LocalCluster, cclient) -> list[str]:  # noqa: ANN001
    """Two pool names whose hash tags land on different masters."""
    chosen: list[str] = []
    seen: set[int] = set()
    for name in CANDIDATE_POOLS:
        port = cluster.port_of_slot(cclient.keyslot(Keys(name).config))
        if port not in seen:
            chosen.append(name)
            seen.add(port)
        if len(chosen) == 2:
            return chosen
    raise AssertionError("no two candidate pools on different masters")


@pytest.fixture
def capp(cluster: LocalCluster):  # noqa: ANN201 - Celery app
    app = create_app(cluster.url)
    yield app
    gc.collect()
    app.close()


class ClusterWorker(WorkerProcess):
    """An ``emp worker`` subprocess on the cluster (the environment names it)."""

    def wait_ready(self, namespace: str = "default", timeout: float = 60.0) -> ClusterWorker:
        client = cluster_client(self.url, decode_responses=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if self.worker_id in idle_workers(client.zrange(Keys(namespace).idle, 0, -1)):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.worker_id} not ready: "
                           f"{self.log_path.read_text()[-3000:]}")


@pytest.fixture
def start_cluster_worker(
    cluster: LocalCluster, tmp_path: Path
) -> Iterator[Callable[..., ClusterWorker]]:
    """Factory: a worker serving ``pools`` on the cluster; all killed at the end."""
    started: list[ClusterWorker] = []

    def start(worker_id: str, pools: list[str], **env: str) -> ClusterWorker:
        worker = ClusterWorker(cluster.url, tmp_path, worker_id,
                               {"WORKER_POOLS": ",".join(pools), **env}, [])
        started.append(worker)
        for pool in pools:
            worker.wait_ready(pool)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def start_cluster_server(
    cluster: LocalCluster, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_cluster_server("api")`` on the cluster; all stopped at the end."""
    started: list[ServerProcess] = []

    def start(command: str, **env: str) -> ServerProcess:
        server = ServerProcess(command, cluster.url, tmp_path, env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
