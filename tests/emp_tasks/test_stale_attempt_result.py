"""A run whose attempt was taken away stores nothing in Celery's result backend:
``AsyncResult.get()`` returns what the attempt the job record says finished returned."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
import redis

from conftest import wait_for
from emp_tasks.producer import get_job

#: A job type that never asks whether it was cancelled: only the fence stops its outcome.
BLIND_JOBS = '''
import os
import time

import redis
from celery import shared_task


@shared_task(bind=True, name="test.blind_sleep", service="echo")
def blind_sleep(self, seconds, raise_on="", retry_on=""):
    time.sleep(seconds)
    redis.Redis.from_url(os.environ["EMP_REDIS_URL"]).rpush(
        "test:returned", self.request.hostname)
    if raise_on and self.request.hostname.startswith(raise_on + "@"):
        raise RuntimeError("the stale run failed")
    if retry_on and self.request.hostname.startswith(retry_on + "@"):
        raise self.retry(countdown=0, max_retries=3)
    return {"worker": self.request.hostname}
'''


@pytest.fixture
def blind_worker_env(jobs_env) -> dict[str, str]:  # noqa: ANN001
    """Environment of workers that also run ``test.blind_sleep``."""
    return jobs_env("blind_jobs", BLIND_JOBS)


def blind_sleep(seconds: float, raise_on: str = "", retry_on: str = "") -> None:
    """The producer's side of ``test.blind_sleep``: its name and service."""


def published(pubsub: Any) -> list[dict[str, Any]]:
    """Every result the backend published for the subscribed task, in order."""
    stored = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            stored.append(json.loads(message["data"]))
    return stored


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stale_run", ["returns", "raises", "retries"])
def test_stale_attempts_outcome_never_reaches_the_result_backend(
        app, client, redis_server, start_worker, blind_worker_env, stale_run) -> None:
    """Tried: w1 runs a job that sleeps 6 s without checking for a cancel; 3 s in, w1's
    process group is stopped (SIGSTOP) until its 2 s lease expires and w2 starts the
    job again (attempt 2), then continued (SIGCONT), so attempt 1 returns (or raises)
    while attempt 2 still runs. Before the fix attempt 1's return value was stored as
    SUCCESS, and Celery keeps a SUCCESS, so ``get()`` returned attempt 1's result
    while the job record said attempt 2 finished (a raise was stored as FAILURE, a
    retry as RETRY, though the retry itself was refused)."""
    blind = app.task(name="test.blind_sleep", service="echo", shared=False)(blind_sleep)
    first = start_worker("w1", **blind_worker_env)
    stale = {"raises": "raise_on", "retries": "retry_on"}.get(stale_run)
    task_id = f"blind-{stale_run}"
    pubsub = redis.Redis(port=redis_server.port).pubsub()
    pubsub.subscribe(app.backend.get_key_for_task(task_id).decode())
    payload = {"seconds": 6, **({stale: "w1"} if stale else {})}
    result = blind.apply_async(kwargs=payload, task_id=task_id)
    wait_for(lambda: get_job(task_id, app=app)["status"] == "in_progress", timeout=30,
             message="w1 to start the job")
    started = time.monotonic()
    start_worker("w2", **blind_worker_env)
    time.sleep(max(0.0, 3 - (time.monotonic() - started)))
    os.killpg(first.process.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: get_job(task_id, app=app).get("worker_id") == "w2", timeout=30,
                 message="w2 to take the job once w1's lease expired")
    finally:
        os.killpg(first.process.pid, signal.SIGCONT)
    wait_for(lambda: any(name.startswith("w1@") for name in client.lrange("test:returned", 0, -1)),
             timeout=30, message="attempt 1 to end its run")
    time.sleep(1.0)  # what attempt 1's worker does after the task returns
    assert get_job(task_id, app=app)["status"] == "in_progress"  # attempt 2 still runs
    assert result.get(timeout=30)["worker"].startswith("w2@")
    record = get_job(task_id, app=app)
    assert record["status"] == "completed"
    assert record["attempts"] == 2 and record["worker_id"] == "w2"
    assert app.AsyncResult(task_id).get(timeout=10)["worker"].startswith("w2@")
    stored = published(pubsub)
    outcomes = [meta for meta in stored if meta["status"] != "STARTED"]
    assert [meta["status"] for meta in outcomes] == ["SUCCESS"], stored
    assert outcomes[0]["result"]["worker"].startswith("w2@")
    assert first.process.poll() is None  # w1 lives on
    pubsub.close()
