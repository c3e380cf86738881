"""A job keeps its payload once in Redis (in the stored Celery message), pending and done."""

from __future__ import annotations

import json

from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks.producer import get_job, submit

#: 100 KB of payload, the size the issue measured (235 KB per job).
BIG = {"blob": "x" * 100_000, "n": 7}


def record_bytes(client, job_id: str) -> int:  # noqa: ANN001 - redis client
    """What the job record costs Redis (MEMORY USAGE, every field counted)."""
    return client.memory_usage(Keys("default").job(job_id), samples=0)


def test_a_jobs_payload_is_stored_once(app, client, start_worker) -> None:
    """Tried: a 100 KB payload, pending, then completed by a real worker, then retried
    once (the retry message replaces the stored one). Before the fix the record held
    the payload as a field and again base64-encoded in the Celery message: 280 KB
    of record per job. The record and every reader still show the payload."""
    size = len(json.dumps(BIG))
    pending = submit("echo", BIG, app=app)
    assert record_bytes(client, pending.id) < 1.25 * size
    assert get_job(pending.id, app=app)["payload"] == BIG
    start_worker("w1")
    assert pending.get(timeout=30)["echo"] == BIG
    assert record_bytes(client, pending.id) < 1.25 * size
    assert get_job(pending.id, app=app)["payload"] == BIG
    retried = submit("echo", {**BIG, "fail_times": 1}, app=app)
    assert retried.get(timeout=30)["retries"] == 1
    wait_for(lambda: get_job(retried.id, app=app)["status"] == "completed", timeout=10,
             message="the retried job's record to complete")
    assert get_job(retried.id, app=app)["payload"] == {**BIG, "fail_times": 1}
    assert record_bytes(client, retried.id) < 1.25 * size


def test_positional_args_stay_in_the_payload(app, client) -> None:
    """Tried: a job sent with positional args; its payload (kwargs plus ``args``) is read
    back from the stored message as the producer built it."""
    task = app.tasks["emp.echo"]
    job = task.apply_async(args=[0], kwargs={"a": 1})
    assert get_job(job.id, app=app)["payload"] == {"a": 1, "args": [0]}
    assert "payload" not in client.hkeys(Keys("default").job(job.id))
