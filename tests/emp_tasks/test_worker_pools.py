"""Which pools a worker serves: ``-Q``, else WORKER_POOLS, else its machine's MACHINE_POOL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from capability_router.keys import Keys
from conftest import ROOT
from emp_tasks import defaults


def test_worker_pools_fall_back_from_worker_pools_to_machine_pool(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_POOLS", raising=False)
    monkeypatch.delenv("MACHINE_POOL", raising=False)
    assert defaults.worker_pools() == ["default"]
    monkeypatch.setenv("MACHINE_POOL", "heavy")
    assert defaults.worker_pools() == ["heavy"]
    monkeypatch.setenv("WORKER_POOLS", "fast, standard")
    assert defaults.worker_pools() == ["fast", "standard"]


@pytest.mark.timeout(90)
def test_a_machine_pool_worker_serves_that_pool(start_worker, client) -> None:
    worker = start_worker("w-heavy", wait=False, MACHINE_POOL="heavy")
    worker.wait_ready(namespace="heavy")
    record = client.hgetall("emp:worker:w-heavy")
    assert record["pools"] == '["heavy"]'
    assert client.zscore(Keys("heavy").workers, "w-heavy") is not None  # live in heavy


def test_a_bad_machine_pool_is_refused_naming_it(redis_server) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": redis_server.url,
           "MACHINE_POOL": "no pool", "WORKER_SERVICES": "echo"}
    done = subprocess.run([sys.executable, "-m", "emp_tasks.cli", "worker"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid pool name 'no pool'" in done.stderr and "MACHINE_POOL" in done.stderr
