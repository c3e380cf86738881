"""Celery's own ways of stopping a task (``expires``, ``revoke``, ``revoke(terminate=True)``)
end the job ``cancelled``, with a ``job_cancelled`` event, as an EMP cancel does."""

from __future__ import annotations

import time

import pytest

from conftest import wait_for
from emp_tasks.producer import get_job, job_events, submit


def ended_cancelled(app, job_id: str, reason: str) -> None:  # noqa: ANN001 - Celery app
    """The job ended cancelled for ``reason``, with job_cancelled and no job_failed event."""
    wait_for(lambda: get_job(job_id, app=app)["status"] not in (
        "pending", "assigned", "in_progress"), timeout=30, message=f"job {job_id} to end")
    record = get_job(job_id, app=app)
    assert record["status"] == "cancelled", record
    assert reason in record["last_error"]
    events = [event["event"] for event in job_events(job_id, app=app)]
    assert "job_cancelled" in events and "job_failed" not in events, events
    assert app.AsyncResult(job_id).state == "REVOKED"


def test_expired_job_ends_cancelled(app, start_worker) -> None:
    """Tried: a job submitted with Celery's ``expires=1`` while no worker ran, and a
    worker started after it expired. Before the fix the worker discarded it and its
    ack failed the job ("task ended without recording an outcome"), with job_failed."""
    expired = submit("echo", {"x": 1}, app=app, expires=1)
    time.sleep(1.5)
    start_worker("w1")
    ended_cancelled(app, expired.id, "expired")
    assert submit("echo", {"x": 2}, app=app).get(timeout=30)["echo"] == {"x": 2}


def test_revoke_of_a_pending_job_ends_it_cancelled(app, start_worker) -> None:
    """Tried: ``app.control.revoke(id)`` of a pending job, the worker busy with
    another; the worker claims it next and discards it. Before the fix that
    ended the job failed with a job_failed event."""
    start_worker("w1")
    busy = submit("echo", {"sleep": 2}, app=app)
    wait_for(lambda: get_job(busy.id, app=app)["status"] == "in_progress", timeout=30,
             message="the first job to start")
    pending = submit("echo", {"x": 1}, app=app)
    app.control.revoke(pending.id)
    assert busy.get(timeout=30)
    ended_cancelled(app, pending.id, "revoked")
    assert get_job(pending.id, app=app)["worker_id"] == "w1"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_revoke_terminate_of_a_running_job_ends_it_cancelled(app, start_worker, pool) -> None:
    """Tried: Celery's ``app.control.revoke(id, terminate=True)`` (not EMP's cancel) of a
    running simulation job. Before the fix the killed run's ack failed the job. Under
    ``-P threads`` Celery's pool raised NotImplementedError (a thread cannot be killed)
    and the job ran on; now the job is cancelled and its run stops at its next check."""
    start_worker("w1", args=["-P", pool])
    running = submit("simulation", {"steps": 1, "duration": 30}, app=app)
    wait_for(lambda: get_job(running.id, app=app)["status"] == "in_progress", timeout=30,
             message="the job to start")
    app.control.revoke(running.id, terminate=True)
    ended_cancelled(app, running.id, "terminated")
    assert submit("echo", {"x": 2}, app=app).get(timeout=30)["echo"] == {"x": 2}
