"""``self.retry(throw=False)`` and then a normal return: which result the job keeps.

Stock Celery 5.7 on Redis (checked with a plain Celery app and worker): the retry message
is sent, the run's return value is stored as SUCCESS, the retry runs, and its result is
not stored (Celery's Redis backend keeps the first SUCCESS): ``get()`` gives the first
run's value. In EMP the retry takes the job on, so the first run's outcome is refused
by the attempt fence and stored nowhere; the job's result is the retry's (README,
"Coming from Celery")."""

from __future__ import annotations

import pytest
import redis

from emp_tasks.producer import get_job

RETRY_JOBS = '''
import os

import redis
from celery import shared_task


@shared_task(bind=True, name="test.retry_no_throw", service="echo")
def retry_no_throw(self):
    runs = redis.Redis.from_url(os.environ["EMP_REDIS_URL"])
    if self.request.retries == 0:
        self.retry(throw=False, countdown=0)
        runs.rpush("test:returned:" + self.request.id, "first")
        return "first"
    runs.rpush("test:returned:" + self.request.id, "second")
    return "second"
'''


def runs_on_workers() -> None:
    """The producer's side of ``test.retry_no_throw``: it runs on the workers only."""


@pytest.mark.timeout(120)
def test_a_retry_without_throw_keeps_the_retrys_result(app, client: redis.Redis,
                                                       start_worker, jobs_env) -> None:
    """Tried: a job whose first run calls ``self.retry(throw=False)`` and returns "first",
    its retry returning "second". EMP stores "second" (the first run's outcome is
    refused: the retry holds the job), where stock Celery stores "first"; both runs
    return."""
    start_worker("w1", **jobs_env("retry_jobs", RETRY_JOBS))
    task = app.task(name="test.retry_no_throw", service="echo", shared=False)(runs_on_workers)
    result = task.apply_async()
    assert result.get(timeout=60) == "second"
    assert client.lrange(f"test:returned:{result.id}", 0, -1) == ["first", "second"]
    record = get_job(result.id, app=app)
    assert record["status"] == "completed" and record["retries"] == 1, record
    assert record["result"] == "second", record
