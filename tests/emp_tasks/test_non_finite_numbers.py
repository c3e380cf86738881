"""A running task's numbers that are not JSON (NaN, infinities) in its progress details and
its result, with a real worker: an ML job's loss goes NaN now and then."""

from __future__ import annotations

import json

import pytest

from emp_tasks.producer import get_job, job_events

JOBS = """
from celery import shared_task


@shared_task(bind=True, name="test.nan_loss", service="echo")
def nan_loss(self):
    self.progress(50, loss=float("nan"), best=float("-inf"))
    return {"loss": float("nan"), "best": float("inf"), "steps": 2}
"""


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.timeout(120)
def test_a_nan_in_progress_details_or_the_result_is_null_and_the_job_completes(
    app, client, start_worker, jobs_env
) -> None:
    """Tried: a task reporting progress with ``loss=float("nan")`` and returning a NaN and
    an infinity. Before the fix the progress call raised ResponseError ("Cannot serialise
    number: must not be NaN or Inf") inside the task, after the record had taken the
    details: the job failed on its progress report. Its result, had it got that far, was
    kept as ``{"loss": NaN}``, which no strict JSON reader takes. Now both are null."""
    start_worker("w1", **jobs_env("nan_jobs", JOBS))

    def nan_loss() -> None:
        """Runs on the worker only."""

    task = app.task(name="test.nan_loss", service="echo", shared=False)(nan_loss)
    result = task.apply_async()
    result.get(timeout=60, propagate=False)
    record = get_job(result.id, app=app)
    assert record["status"] == "completed", record
    assert record["result"] == {"loss": None, "best": None, "steps": 2}
    raw = client.hgetall(f"emp:{{default}}:job:{result.id}")
    for field in ("result", "progress_details"):
        _strict(raw[field])
    events = job_events(result.id, app=app)
    progress = [e["data"] for e in events if e["event"] == "update_job_progress"]
    assert progress and progress[0]["loss"] is None and progress[0]["best"] is None
    for entry in client.xrange(f"emp:{{default}}:job:{result.id}:events"):
        _strict(entry[1]["data"])
