"""OOM-aware escalation on real workers: a job out of GPU memory moves to a bigger GPU."""

from __future__ import annotations

import pytest
from machine_helpers import wait_until

from emp_tasks.oom_escalation import next_step, with_gpu_memory
from emp_tasks.producer import get_job, job_events, submit

LADDER = [8, 16, 24, 48, 80]
#: A worker whose every job runs out of GPU memory.
OOM = {"EMP_SIMULATION_FAILURE_RATE": "1", "EMP_SIMULATION_FAILURE_TYPE": "memory"}


def test_the_next_step_is_above_the_worker_and_the_requirement() -> None:
    assert next_step(8, None, LADDER) == 16
    assert next_step(12, 16, LADDER) == 24
    assert next_step(None, None, LADDER) == 8
    assert next_step(80, None, LADDER) is None
    assert next_step(8, None, LADDER, ceiling_gb=16) == 16
    assert next_step(16, None, LADDER, ceiling_gb=16) is None  # its pool has nothing bigger


def test_the_raised_requirement_goes_where_the_job_put_it() -> None:
    assert with_gpu_memory({"models": ["a"]}, 16) == {"models": ["a"],
                                                      "hardware": {"gpu_memory_gb": 16}}
    nested = {"positive_requirements": {"hardware": {"gpu_memory_gb": 8}}}
    assert with_gpu_memory(nested, 24) == {
        "positive_requirements": {"hardware": {"gpu_memory_gb": 24}}}
    assert nested["positive_requirements"]["hardware"]["gpu_memory_gb"] == 8  # a copy


def _escalations(app, job_id: str) -> list[dict]:
    return get_job(job_id, app=app).get("escalations") or []


@pytest.mark.timeout(120)
def test_a_job_out_of_memory_is_taken_by_a_bigger_worker(app, start_worker) -> None:
    start_worker("gpu-8", WORKER_GPU_MEMORY_GB="8", **OOM)
    job = submit("simulation", {"steps": 1, "duration": 0.05}, max_retries=0, app=app)
    wait_until(lambda: _escalations(app, job.id), timeout=60, message="an escalation")
    record = get_job(job.id, app=app)
    # Waiting for a bigger GPU: the 8 GB worker cannot take it back.
    assert record["status"] == "pending" and record["retries"] == 0
    assert record["requirements"] == {"hardware": {"gpu_memory_gb": 16}}
    step = record["escalations"][0]
    assert (step["from_gb"], step["to_gb"], step["worker_gpu_memory_gb"]) == (None, 16, 8)
    assert step["worker_id"] == "gpu-8" and "out of memory" in step["error"]

    start_worker("gpu-24", WORKER_GPU_MEMORY_GB="24")
    assert job.get(timeout=60)["success"] is True
    record = get_job(job.id, app=app)
    assert record["status"] == "completed" and record["worker_id"] == "gpu-24"
    assert len(record["escalations"]) == 1
    names = [e["event"] for e in job_events(job.id, app=app)]
    assert names.count("job_escalated") == 1 and names[-1] == "complete_job"


@pytest.mark.timeout(150)
def test_escalation_stops_after_its_most_steps(app, start_worker) -> None:
    limits = {"EMP_OOM_MAX_ESCALATIONS": "1", **OOM}
    start_worker("gpu-8", WORKER_GPU_MEMORY_GB="8", **limits)
    job = submit("simulation", {"steps": 1, "duration": 0.05}, max_retries=0, app=app)
    wait_until(lambda: _escalations(app, job.id), timeout=60, message="an escalation")
    start_worker("gpu-16", WORKER_GPU_MEMORY_GB="16", **limits)  # also out of memory
    wait_until(lambda: get_job(job.id, app=app)["status"] == "failed", timeout=60,
               message="the job to fail")
    record = get_job(job.id, app=app)
    assert [s["to_gb"] for s in record["escalations"]] == [16]
    assert record["worker_id"] == "gpu-16" and "[memory]" in record["last_error"]
