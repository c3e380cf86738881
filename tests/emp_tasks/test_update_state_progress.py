"""Celery's way of reporting progress, ``self.update_state(state="PROGRESS", meta=...)``,
moves the job's progress too, with a real worker: a Celery task written for Celery's
documentation streams to the job's followers without EMP's ``self.progress()``."""

from __future__ import annotations

import pytest
import redis

from conftest import wait_for
from emp_tasks.producer import cancel, get_job, job_events

JOBS = """
import os
import time

import redis
from celery import shared_task


@shared_task(bind=True, name="test.celery_progress", service="echo")
def celery_progress(self, n):
    for i in range(n):
        self.update_state(state="PROGRESS", meta={"current": i + 1, "total": n,
                                                  "stage": "render"})
    self.update_state(state="PROGRESS", meta={"note": "no percent here"})
    self.update_state(state="PROGRESS", meta={"percent": float("nan")})
    self.update_state(task_id="someone-else", state="PROGRESS", meta={"percent": 1})
    return "done"


@shared_task(bind=True, name="test.until_cancelled", service="echo")
def until_cancelled(self):
    client = redis.Redis.from_url(os.environ["EMP_REDIS_URL"])
    for i in range(600):
        self.update_state(state="PROGRESS", meta={"percent": i % 100})
        client.set("test:looped", i)
        time.sleep(0.05)
    client.set("test:ran-to-the-end", 1)
"""


def _tasks(app):  # noqa: ANN001, ANN202 - the test's Celery app and its two task stubs
    def celery_progress(n: int) -> None:
        """Runs on the worker only."""

    def until_cancelled() -> None:
        """Runs on the worker only."""

    return (app.task(name="test.celery_progress", service="echo",
                     shared=False)(celery_progress),
            app.task(name="test.until_cancelled", service="echo",
                     shared=False)(until_cancelled))


@pytest.mark.timeout(120)
def test_a_progress_state_is_the_jobs_progress_and_a_cancel_stops_the_run(
        app, client: redis.Redis, start_worker, jobs_env) -> None:
    """Tried: a task calling ``update_state(state="PROGRESS", meta={"current": i, "total":
    4, ...})`` four times, then with a meta that gives no percent, a NaN percent and
    another task's id; and a task looping on ``update_state`` until its job is cancelled.
    Before, the job's record and events said nothing between ``job_started`` and
    ``complete_job`` (Celery's result alone read PROGRESS) and a cancel did not reach
    the loop. Now each progress state of its own with a percent is an
    ``update_job_progress`` event with the meta as details, the rest are Celery's only,
    and the cancelled run stops at its next ``update_state`` (REVOKED)."""
    start_worker("w1", **jobs_env("celery_progress_jobs", JOBS))
    celery_progress, until_cancelled = _tasks(app)

    result = celery_progress.apply_async(kwargs={"n": 4})
    assert result.get(timeout=60) == "done"
    progress = [e["data"] for e in job_events(result.id, app=app)
                if e["event"] == "update_job_progress"]
    assert [p["progress"] for p in progress] == [25, 50, 75, 100], progress
    assert progress[1]["current"] == 2 and progress[1]["total"] == 4
    assert progress[1]["stage"] == "render"

    looping = until_cancelled.apply_async()
    wait_for(lambda: client.get("test:looped") is not None, timeout=30,
             message="the loop to start")
    assert get_job(looping.id, app=app)["status"] == "in_progress"
    assert cancel(looping.id, app=app) == "cancelled"
    wait_for(lambda: looping.state == "REVOKED", timeout=30, message="the run to stop")
    stopped_at = client.get("test:looped")
    wait_for(lambda: get_job(looping.id, app=app)["status"] == "cancelled", timeout=5)
    assert client.get("test:looped") == stopped_at, "the loop went on"
    assert client.get("test:ran-to-the-end") is None
