"""A job cancelled while its worker holds it in Celery's rate-limit bucket (claimed,
not started) is REVOKED in the result backend at the cancel, as a pending one is."""

from __future__ import annotations

import time

import pytest
import redis

from conftest import wait_for
from emp_tasks.producer import cancel, get_job, resubmit

#: A job type Celery lets run once every 6 s on a worker (``rate_limit``).
RATE_LIMITED_JOBS = '''
import os

import redis
from celery import shared_task


@shared_task(bind=True, name="test.every_6s", service="echo", rate_limit="10/m")
def every_6s(self):
    redis.Redis.from_url(os.environ["EMP_REDIS_URL"]).rpush("test:ran", self.request.id)
    return "ran"
'''


@pytest.mark.timeout(120)
def test_a_job_cancelled_in_the_rate_limit_bucket_is_revoked_at_once(
        app, client: redis.Redis, start_worker, jobs_env) -> None:
    """Tried: two jobs of a task with ``rate_limit="10/m"`` on one worker; the first
    runs, the second is claimed and waits in the worker's rate-limit bucket (record
    ``assigned``) and is cancelled there, then resubmitted once the bucket let it go.
    Before the fix its record said cancelled but ``AsyncResult(id).state`` stayed
    PENDING (``get()`` waited) until the bucket let it go (with ``1/m``, up to a minute
    later). Now it is REVOKED at the cancel and stays so, the cancelled run never
    happens, and the resubmitted job runs."""
    def body() -> None:
        """Runs on the workers only."""
    task = app.task(name="test.every_6s", service="echo", rate_limit="10/m",
                    shared=False)(body)
    start_worker("w1", **jobs_env("rate_limited_jobs", RATE_LIMITED_JOBS))
    first = task.apply_async()
    assert first.get(timeout=30) == "ran"
    second = task.apply_async()
    wait_for(lambda: get_job(second.id, app=app)["status"] == "assigned", timeout=30,
             message="the worker to claim the second job")
    time.sleep(1.0)  # into the bucket
    assert get_job(second.id, app=app)["status"] == "assigned"
    assert app.AsyncResult(second.id).state == "PENDING"
    assert cancel(second.id, app=app) == "cancelled"
    assert app.AsyncResult(second.id).state == "REVOKED"
    time.sleep(8.0)  # the bucket lets it go: the worker drops it
    assert app.AsyncResult(second.id).state == "REVOKED"
    assert client.lrange("test:ran", 0, -1) == [first.id]
    assert get_job(second.id, app=app)["status"] == "cancelled"
    assert resubmit(second.id, app=app) == "pending"  # the worker forgets the revoke
    # (its AsyncResult reads the old REVOKED until the new run stores its own state)
    wait_for(lambda: get_job(second.id, app=app)["status"] == "completed", timeout=30,
             message="the resubmitted job to run")
    assert client.lrange("test:ran", 0, -1) == [first.id, second.id]
    assert app.AsyncResult(second.id).get(timeout=10) == "ran"
