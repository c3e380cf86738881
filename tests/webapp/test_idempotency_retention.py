"""An idempotency key never outlives the job record its answer names.

Job records are kept ``EMP_RETENTION_SECONDS`` after their job ended (each
pool's setting, written by its workers); idempotency keys
``EMP_IDEMPOTENCY_SECONDS`` after the first request. A key that outlived the
record answered its retry with a 201 naming a job that 404s.
"""

from __future__ import annotations

import subprocess

import pytest
from rest_helpers import TOKEN_A, TOKENS_ENV, Api

from capability_router.functions import QueueFunctions
from conftest import wait_for
from tests.emp_tasks.test_cli import run

pytestmark = pytest.mark.timeout(120)

JOB = {"service_required": "echo", "payload": {"n": 1}}


def test_a_retry_after_the_job_record_was_swept_never_names_a_missing_job(
        start_server, client) -> None:
    """Tried: the default pool's workers keep records 2 s (``emp worker`` with
    EMP_RETENTION_SECONDS=2 writes retention_ms=2000 into the pool's config), the API's
    keys 24 h (the default); a keyed POST /api/jobs, its job cancelled, its record swept,
    then the same POST again. Before the fix the retry was answered 201 (replayed) naming
    the swept job, whose GET is 404: the client was told its job exists and it is
    nowhere. Now the key lasts no longer than the record (2 s after the job was placed):
    the retry is a new submit, and the job it names is there."""
    QueueFunctions(client, "default").configure(retention_ms=2000)
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    first = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-swept"})
    assert first.status_code == 201, first.text
    job_id = first.json()["job_id"]
    assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    wait_for(lambda: api.get(f"/api/jobs/{job_id}").status_code == 404, timeout=20,
             message="the cancelled job's record to be swept")
    retry = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-swept"})
    print(f"\nretry: {retry.status_code} {retry.headers.get('Idempotent-Replayed')} "
          f"{retry.text.strip()}")
    assert retry.status_code == 201, retry.text
    named = api.get(f"/api/jobs/{retry.json()['job_id']}")
    assert named.status_code == 200, (retry.text, named.text)
    assert "Idempotent-Replayed" not in retry.headers


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
