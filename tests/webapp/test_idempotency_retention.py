"""An idempotency key never outlives the job record its answer names.

Job records are kept ``EMP_RETENTION_SECONDS`` after their job ended (each
pool's setting, written by its workers); idempotency keys
``EMP_IDEMPOTENCY_SECONDS`` after the first request. A key that outlived the
record answered its retry with a 201 naming a job that 404s.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from rest_helpers import TOKEN_A, TOKENS_ENV, Api
from test_idempotency_hang import _socket_submit

from capability_router.functions import QueueFunctions
from conftest import wait_for
from tests.emp_tasks.test_cli import run

pytestmark = pytest.mark.timeout(120)

JOB = {"service_required": "echo", "payload": {"n": 1}}


def swept(api: Api, job_id: str) -> None:
    """Cancel the job and wait until its record is swept (the pool's retention after)."""
    assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    wait_for(lambda: api.get(f"/api/jobs/{job_id}").status_code == 404, timeout=20,
             message="the cancelled job's record to be swept")


def test_a_retry_after_the_job_record_was_swept_says_so(start_server, client) -> None:
    """Tried: the default pool's workers keep records 2 s (``emp worker`` with
    EMP_RETENTION_SECONDS=2 writes retention_ms=2000 into the pool's config), the API's
    keys 24 h (the default); a keyed POST /api/jobs, its job cancelled, its record swept,
    then the same POST again. Before the fix the retry was answered 201 (replayed) naming
    the swept job, whose GET is 404: the client was told its job exists and it is
    nowhere. Now it is 409 naming the job and why it is gone, and no job is filed."""
    QueueFunctions(client, "default").configure(retention_ms=2000)
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    first = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-swept"})
    assert first.status_code == 201, first.text
    job_id = first.json()["job_id"]
    swept(api, job_id)
    retry = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-swept"})
    print(f"\nretry: {retry.status_code} {retry.headers.get('Idempotent-Replayed')} "
          f"{retry.text.strip()}")
    assert retry.status_code == 409, retry.text
    assert retry.json()["job_id"] == job_id and "retention" in retry.json()["error"]
    assert api.get("/api/jobs").json()["jobs"] == []


def test_a_socket_resubmit_after_the_job_record_was_swept_says_so(
        start_server, client) -> None:
    """Tried: the same 2 s record retention; a client socket's submit_job with a
    message_id, its job cancelled and swept, then the same submit_job on a new socket.
    Before the fix the retry filed the job again under the message_id (a second run of
    a job the client had submitted once, within the message_id's 24 h). Now it gets
    error 409 naming the job and why it is gone, and no job is filed."""
    QueueFunctions(client, "default").configure(retention_ms=2000)
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    submit = {"type": "submit_job", "message_id": "ws-swept-1", **JOB}
    first = _socket_submit(server, submit, "swept-1")
    assert first["type"] == "job_submitted" and first["job_id"] == "ws-swept-1", first
    swept(api, "ws-swept-1")
    retry = _socket_submit(server, submit, "swept-2")
    print(f"\nretry: {retry}")
    assert retry["type"] == "error" and retry["status"] == 409, retry
    assert retry["job_id"] == "ws-swept-1" and "retention" in retry["error"], retry
    assert api.get("/api/jobs").json()["jobs"] == []


def test_a_keyed_retry_of_a_job_pending_past_the_retention_is_that_job(
        start_server, client) -> None:
    """Tried: the same 2 s record retention; a keyed POST /api/jobs whose job waits (no
    worker) 3 s, then the same POST. A record is kept its retention after its job
    *ended*, so the job is still there: the retry is 201 replayed naming it, and there
    is one job. (Capping the key at the retention from the submit, tried first, filed a
    second job here.)"""
    QueueFunctions(client, "default").configure(retention_ms=2000)
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    first = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-waits"})
    assert first.status_code == 201, first.text
    time.sleep(3)
    retry = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-waits"})
    assert (retry.status_code, retry.json()) == (201, first.json()), retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert [job["job_id"] for job in api.get("/api/jobs").json()["jobs"]] == [
        first.json()["job_id"]]


def test_emp_api_refuses_keys_kept_longer_than_job_records() -> None:
    """Tried: ``emp api`` with EMP_RETENTION_SECONDS=3600 and EMP_IDEMPOTENCY_SECONDS=86400
    (a retry a day later would replay an answer naming a job swept 23 h before). Before,
    it started. Now it stops before serving with one line naming both settings."""
    try:
        done = run("api", "--port", "1", env={
            "EMP_RETENTION_SECONDS": "3600", "EMP_IDEMPOTENCY_SECONDS": "86400",
            "EMP_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("emp api started serving (still running after 30 s)")
    assert done.returncode == 1, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: EMP_IDEMPOTENCY_SECONDS (86400) is longer than "
                           "EMP_RETENTION_SECONDS (3600)"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
