"""Warm-first claims on real worker processes (simulation connector with model tiers).

``warm`` starts with sdxl loaded in its GPU, ``cold`` has it on disk; both are
idle. The delay a cold worker leaves a job to a warm one is its load time from
disk (``load_ms_disk``), capped by ``affinity_max_delay_ms``.
"""

from __future__ import annotations

import pytest
import redis
from machine_helpers import wait_until

from capability_router.functions import QueueFunctions
from capability_router.residency import read_residency, warm_workers
from emp_tasks.producer import get_job, submit

SIM = {"EMP_CONNECTOR": "simulation", "EMP_SIMULATION_MODELS": "sdxl,flux",
       "EMP_SIMULATION_GPU_MEMORY_GB": "8", "EMP_SIMULATION_MODEL_SIZE_GB": "6",
       "EMP_SIMULATION_DISK_LOAD_SECONDS": "1", "EMP_HEALTH_GATE": "off"}


def start_pair(start_worker, warm_models: str = "sdxl") -> None:
    start_worker("warm", **SIM, EMP_SIMULATION_GPU_MODELS=warm_models)
    start_worker("cold", **SIM)


def sdxl_job(app, **kwargs):  # noqa: ANN001, ANN201 - Celery objects
    return submit("simulation", {"steps": 1, "duration": kwargs.pop("duration", 0.1)},
                  requirements={"models": [kwargs.pop("model", "sdxl")]}, app=app, **kwargs)


@pytest.mark.timeout(120)
def test_a_warm_worker_gets_its_models_jobs_ahead_of_a_cold_idle_worker(
        app, client: redis.Redis, queue: QueueFunctions, start_worker) -> None:
    queue.configure(load_ms_disk=30_000, affinity_max_delay_ms=30_000)
    start_pair(start_worker)
    assert warm_workers(client, "sdxl", "default") == ["warm"]
    jobs = [sdxl_job(app) for _ in range(4)]
    results = [job.get(timeout=60) for job in jobs]
    assert [get_job(j.id, app=app)["worker_id"] for j in jobs] == ["warm"] * 4
    assert [r["cold"] for r in results] == [False] * 4


@pytest.mark.timeout(120)
def test_without_affinity_the_cold_worker_loads_the_model(
        app, client: redis.Redis, queue: QueueFunctions, start_worker) -> None:
    """The baseline the test above must beat: jobs go to whoever claims first."""
    queue.configure(affinity=0)
    start_pair(start_worker)
    jobs = [sdxl_job(app, duration=0.5) for _ in range(4)]
    results = [job.get(timeout=60) for job in jobs]
    assert {get_job(j.id, app=app)["worker_id"] for j in jobs} == {"warm", "cold"}
    assert any(r["cold"] for r in results)


@pytest.mark.timeout(120)
def test_the_delay_expires_and_the_cold_worker_takes_the_job(
        app, client: redis.Redis, queue: QueueFunctions, start_worker) -> None:
    """The warm worker is busy with a long job; the cold one waits out the delay (1.5 s),
    then loads sdxl itself instead of waiting for the warm one to finish (30 s: long
    enough that the cold worker's start on a loaded machine does not outlast it)."""
    queue.configure(load_ms_disk=1500)
    start_worker("warm", **SIM, EMP_SIMULATION_GPU_MODELS="sdxl")
    long = submit("simulation", {"steps": 1, "duration": 30}, app=app)
    wait_until(lambda: get_job(long.id, app=app)["status"] == "in_progress", timeout=30)
    start_worker("cold", **SIM)
    job = sdxl_job(app)
    result = job.get(timeout=60)
    record = get_job(job.id, app=app)
    assert record["worker_id"] == "cold" and result["cold"]
    waited = int(record["assigned_at"]) - int(record["created_at"])
    assert 1500 <= waited < 6000
    assert get_job(long.id, app=app)["status"] == "in_progress"
    assert read_residency(client, "cold", "default")["sdxl"] == "gpu"
    assert sorted(warm_workers(client, "sdxl", "default")) == ["cold", "warm"]


@pytest.mark.timeout(120)
def test_priority_beyond_the_window_beats_a_warm_job(
        app, client: redis.Redis, queue: QueueFunctions, start_worker) -> None:
    """One warm worker (room for two models), busy while three jobs queue: flux at
    priority 55, wan at 80, sdxl (warm) at 50. Beyond the window (10) priority wins: wan
    first; within it the warm job: sdxl (still loaded beside wan) before flux."""
    queue.configure(affinity_window=10)
    start_worker("warm", **{**SIM, "EMP_SIMULATION_MODELS": "sdxl,flux,wan",
                             "EMP_SIMULATION_GPU_MEMORY_GB": "12"},
                 EMP_SIMULATION_GPU_MODELS="sdxl")
    blocker = submit("simulation", {"steps": 1, "duration": 2}, app=app)
    wait_until(lambda: get_job(blocker.id, app=app)["status"] == "in_progress", timeout=30)
    near = sdxl_job(app, model="flux", priority=55)
    far = sdxl_job(app, model="wan", priority=80)
    warm = sdxl_job(app, priority=50)
    for job in (near, far, warm):
        job.get(timeout=60)
    order = sorted((int(get_job(j.id, app=app)["started_at"]), name)
                   for j, name in ((near, "flux-55"), (far, "wan-80"), (warm, "sdxl-50")))
    assert [name for _, name in order] == ["wan-80", "sdxl-50", "flux-55"]
