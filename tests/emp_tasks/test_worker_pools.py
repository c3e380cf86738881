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


def test_a_worker_that_cannot_run_its_pools_jobs_is_warned_at_its_start(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Tried: ``EMP_POOLS_FILE=conf/pools.toml emp worker -Q heavy`` (no --gpu-memory-gb),
    then a job asking 48 GB: the router filed it in heavy (a live worker there), where it
    waited for ever, since the only heavy worker had 0 GB; and ``emp worker -Q fast
    --services comfyui``, a service fast does not run, so the router files none of its jobs
    there. Both started without a word. Now each says so at the worker's start."""
    from capability_router.pools import DEFAULT_POOLS_FILE
    from capability_router.profile import WorkerProfile
    from emp_tasks.cli import _warn_unknown_pools

    monkeypatch.setenv("EMP_POOLS_FILE", str(DEFAULT_POOLS_FILE))
    _warn_unknown_pools(WorkerProfile("w-heavy", ["simulation"]), ["heavy"])
    said = capsys.readouterr().err
    assert ("w-heavy: warning: it has 0 GB of GPU memory (--gpu-memory-gb, "
            "WORKER_GPU_MEMORY_GB) and pool heavy's machines 40-80 GB") in said, said
    _warn_unknown_pools(WorkerProfile("w-fast", ["comfyui", "text"]), ["fast"])
    said = capsys.readouterr().err
    assert "w-fast: warning: pool fast does not run service comfyui" in said, said
    assert "text" not in said
    # A worker that fits its pool hears nothing.
    _warn_unknown_pools(WorkerProfile("w-ok", ["simulation"], hardware={"gpu_memory_gb": 48}),
                        ["heavy"])
    assert capsys.readouterr().err == ""


def test_q_takes_a_comma_list_like_worker_pools_and_celery(redis_server) -> None:
    """Tried: ``emp worker -Q heavy,fast`` (Celery's ``-Q`` form, and ``WORKER_POOLS``'s):
    refused as ``invalid pool name 'heavy,fast'``. Now ``-Q`` splits on commas as they do;
    each name is still checked (here the ``..`` after the comma is what is refused)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": redis_server.url,
           "WORKER_SERVICES": "echo"}
    done = subprocess.run([sys.executable, "-m", "emp_tasks.cli", "worker", "-Q", "heavy,.."],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "'..' cannot be a pool name" in done.stderr and "-Q" in done.stderr, done.stderr
