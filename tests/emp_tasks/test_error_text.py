"""A task's error text that is not valid UTF-8, with a real worker: a path read from disk
with ``surrogateescape`` (Python's way with non-UTF-8 file names on Linux) ends up in
the exception message."""

from __future__ import annotations

import pytest

from conftest import wait_for
from emp_tasks.producer import get_job, job_events

JOBS = """
from celery import shared_task


@shared_task(bind=True, name="test.bad_name", service="echo", max_retries=0)
def bad_name(self):
    name = b"/data/in-\\xff.png".decode("utf-8", "surrogateescape")
    self.progress(10, message="reading " + name)
    raise RuntimeError("cannot read " + name)
"""


@pytest.mark.timeout(120)
def test_a_failure_whose_message_is_not_utf8_is_recorded_as_the_tasks_failure(
    app, client, start_worker, jobs_env
) -> None:
    """Tried: a task whose progress message and exception message name a file as Python
    reads a non-UTF-8 name (a lone surrogate, ``\\udcff``). Before the fix the progress
    report's details reached the library as the JSON escape ``\\udcff``, which its
    decoder refuses: the report raised ResponseError ("invalid unicode escape code")
    inside the task, and the job failed with that instead of its own error; the error
    text itself could not be encoded by redis-py (UnicodeEncodeError). Now the
    undecodable byte is shown as U+FFFD and the job fails with the task's own error."""
    start_worker("w1", **jobs_env("bad_jobs", JOBS))

    def bad_name() -> None:
        """Runs on the worker only."""

    task = app.task(name="test.bad_name", service="echo", shared=False)(bad_name)
    result = task.apply_async()
    wait_for(
        lambda: get_job(result.id, app=app)["status"] == "failed",
        timeout=60,
        message="the job to fail",
    )
    record = get_job(result.id, app=app)
    assert record["last_error"] == "RuntimeError: cannot read /data/in-\ufffd.png", record
    progress = [
        e["data"] for e in job_events(result.id, app=app) if e["event"] == "update_job_progress"
    ]
    assert progress and progress[0]["message"] == "reading /data/in-\ufffd.png"
