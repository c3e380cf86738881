"""Pool metrics count a job failed on its run's acknowledgement, once.

A run that ends without recording an outcome (its pool process killed by a task that
does not requeue a lost run, a ``Reject(requeue=False)``, a hard time limit no one could
record) is failed by the queue when the worker's acknowledgement arrives (``emp_ack``, or
the acks a claim carries: ``ack_attempts`` in ``emp.lua``). The job record said failed
and ``job_failed`` went out, but the pool's minute counted no failure: the failed count of
``/api/pools/<name>/metrics`` and the monitor's pool page stayed 0. Read here as they read
it (``pool_series``), with real workers.
"""

from __future__ import annotations

import time

import pytest
import redis

from capability_router.pool_metrics import pool_series
from conftest import wait_for
from emp_tasks.producer import get_job, job_events, submit

#: Job types the workers import (``EMP_CELERY_CONFIG``).
OUTCOMELESS_JOBS = '''
import os
import signal

from celery import shared_task
from celery.exceptions import Reject


@shared_task(name="test.killed_not_requeued", service="echo", reject_on_worker_lost=False)
def killed_not_requeued():
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="test.rejected_for_good", service="echo")
def rejected_for_good():
    raise Reject("not for this queue", requeue=False)
'''

NO_OUTCOME = "task ended without recording an outcome"


@pytest.fixture
def outcomeless_env(jobs_env) -> dict[str, str]:  # noqa: ANN001
    return jobs_env("outcomeless_jobs", OUTCOMELESS_JOBS)


def producer_task(app, name: str):  # noqa: ANN001, ANN201 - a Celery task
    """The producer's side of a job type of ``OUTCOMELESS_JOBS``."""
    def body() -> None:
        """Runs on the workers only."""
    return app.task(name=name, service="echo", shared=False)(body)


def totals(client: redis.Redis) -> dict:
    """The pool's figures over the last hour, as the monitor and the REST API read them."""
    return pool_series(client, "default", "1h")["totals"]


def failed_once(app, client: redis.Redis, job_id: str, error: str) -> None:  # noqa: ANN001
    """The job ended failed with ``error``, one ``job_failed``, and the pool's hour counts
    one claim and one failure (no completion, no run time)."""
    wait_for(lambda: get_job(job_id, app=app)["status"] == "failed", timeout=30,
             message=f"job {job_id} to end failed")
    time.sleep(1.5)  # over a third of the lease: any later acknowledgement has come
    record = get_job(job_id, app=app)
    assert record["status"] == "failed" and error in record["last_error"], record
    events = [e["event"] for e in job_events(job_id, app=app)]
    assert events.count("job_failed") == 1, events
    figures = totals(client)
    assert (figures["claims"], figures["failed"], figures["throughput"]) == (1, 1, 0), figures
    assert figures["run_mean_seconds"] is None, figures


@pytest.mark.timeout(120)
def test_a_killed_run_acknowledged_without_outcome_counts_failed(
        app, client: redis.Redis, start_worker, outcomeless_env) -> None:
    """Tried: a task with ``reject_on_worker_lost=False`` that SIGKILLs its own pool
    process. Celery acknowledges the lost run (``acks_on_failure_or_timeout``), and the
    queue fails the job on that acknowledgement. Before (library release 28): the record
    said failed, but the pool metrics counted 0 failed (1 claim)."""
    start_worker("w1", **outcomeless_env)
    job = producer_task(app, "test.killed_not_requeued").apply_async()
    failed_once(app, client, job.id, NO_OUTCOME)


@pytest.mark.timeout(120)
def test_a_run_rejected_for_good_counts_failed(
        app, client: redis.Redis, start_worker, outcomeless_env) -> None:
    """Tried: a task that raises ``Reject(requeue=False)``: its message is acknowledged
    with no outcome recorded, and the queue fails the job. Before (release 28): failed in
    the record, 0 failed in the pool metrics."""
    start_worker("w1", **outcomeless_env)
    job = producer_task(app, "test.rejected_for_good").apply_async()
    failed_once(app, client, job.id, NO_OUTCOME)


@pytest.mark.timeout(120)
def test_a_hard_time_limit_counts_failed_once(app, client: redis.Redis, start_worker) -> None:
    """Tried: a job with ``time_limit=1`` that sleeps 10 s. The worker records the limit
    (``emp_fail``, counted) and then acknowledges the killed run; the acknowledgement must
    not fail or count it again. Passed before the fix too: a guard against counting the
    acknowledgement's failure on top."""
    start_worker("w1")
    job = submit("echo", {"sleep": 10}, time_limit=1, app=app)
    failed_once(app, client, job.id, "hard time limit (1 s) exceeded")
