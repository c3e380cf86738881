"""A job whose worker died mid-run waits again with no progress: the record a user
reads (REST ``GET /api/jobs/<id>``, ``emp job``, the monitor) must not say 60%."""

from __future__ import annotations

import pytest

from conftest import wait_for
from emp_tasks.connection import get_functions
from emp_tasks.producer import get_job, submit


@pytest.mark.timeout(120)
def test_a_job_whose_worker_died_waits_again_without_its_progress(app, start_worker) -> None:
    """Tried: a 10-step simulation job (20 s) on worker w1, which is killed (SIGKILL)
    once the job reports 20% or more; its 2 s lease expires and a sweep puts the job
    back to pending. Before the fix ``get_job`` read the pending job at the dead run's
    progress (e.g. 30) with its step details; now it has none, as a job never run, and
    a new worker runs it to 100."""
    first = start_worker("w1")
    result = submit("simulation", {"steps": 10, "duration": 20}, app=app)
    wait_for(lambda: (get_job(result.id, app=app).get("progress") or 0) >= 20, timeout=60,
             message="w1 to report progress")
    first.kill()
    functions = get_functions(app.conf.broker_url, "default")
    wait_for(lambda: functions.sweep() or get_job(result.id, app=app)["status"] == "pending",
             timeout=30, message="the lease to expire and the job to go back to pending")
    record = get_job(result.id, app=app)
    assert record["status"] == "pending" and record["attempts"] == 1
    assert "progress" not in record and "progress_details" not in record, record
    start_worker("w2", wait=False)  # ready only once idle: after it ran this job
    wait_for(lambda: get_job(result.id, app=app)["status"] == "in_progress", timeout=60,
             message="w2 to start the job again")
    progress = get_job(result.id, app=app).get("progress")
    assert progress is None or progress < 20, progress
