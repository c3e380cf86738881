"""How long a keyed retry waits for a first request that has no answer yet follows
``EMP_REDIS_SOCKET_TIMEOUT``, as every other Redis wait does.

Real ``emp api``, real redis-server hung with SIGSTOP at one command through the proxy of
tests/webapp/test_idempotency_hang.py; no mock.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from rest_helpers import TOKEN_A, TOKENS_ENV, Api

from conftest import wait_for
from tests.webapp.test_idempotency_hang import (  # noqa: F401 - hang_at is a fixture
    CLAIM,
    JOB,
    first_gets_503,
    hang_at,
    jobs_in,
    retried,
)
from webapp.api.idempotency import fingerprint, record_key
from webapp.auth import Principal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: The operator's short socket timeout, seconds, and the most a retry may take with it
#: (the timeout plus slack for a loaded machine; well under the old fixed 5 s).
SHORT = 0.5
SHORT_BOUND = SHORT + 1.5


def test_a_retry_after_a_dead_first_request_waits_the_socket_timeout_not_5_s(
        start_server, client, hang_at) -> None:  # noqa: F811 - the fixture
    """Tried: ``emp api`` with ``EMP_REDIS_SOCKET_TIMEOUT=0.5``; a keyed POST /api/jobs
    whose Redis hung at the key's claim (SET NX GET): 503 in 0.5 s, Redis continued and
    wrote the claim late (the key held, no job, no answer: the first request is gone).
    Then the same POST again. Before, the retry waited a fixed 5 s for an answer the
    first would never store (5.1 s measured, ten times the setting) before filing the
    job; now it waits one socket timeout: 201 within 2 s, one job."""
    env = {"EMP_REDIS_SOCKET_TIMEOUT": str(SHORT)}
    server = start_server("api", EMP_API_PROCESSES="1", EMP_REDIS_URL=hang_at.url,
                          **TOKENS_ENV, **env)
    hang_at.arm(CLAIM, late=True)
    api = Api(server.base, TOKEN_A)
    first_gets_503(api, hang_at, "k-wait")
    wait_for(lambda: client.keys("emp:idempotency:*"), timeout=10, message="the late claim")
    assert not jobs_in(client)
    seconds, retry = retried(api, "k-wait")
    print(f"\nretry answered in {seconds:.2f} s: {retry.status_code} {retry.text}")
    assert retry.status_code == 201, retry.text
    assert jobs_in(client) == {retry.json()["job_id"]}
    assert seconds < SHORT_BOUND, f"the retry waited {seconds:.1f} s with a {SHORT} s timeout"



def test_a_retry_waiting_for_the_first_on_a_redis_that_hangs_gets_503(
        start_server, client, freeze) -> None:
    """Tried: ``emp api`` with the default 5 s socket timeout; a key claimed as by a
    first request still in flight (its record, no answer), the same keyed POST, and
    Redis stopped (SIGSTOP) 1 s into the retry's wait for the first's answer. The retry
    gets 503 with Retry-After one socket timeout after the hang (about 6 s in all), not
    a 500 nor a job filed behind it; once Redis goes on, the same POST files the one
    job under the claimed id (201). (So before the change too: the wait's reads fail as
    any Redis call does.)"""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    assert api.get("/api/jobs/nope").status_code == 404  # warm: the hang meets the wait
    key, job_id = "k-in-flight", str(uuid.uuid4())
    client.set(record_key(Principal(customer_id="cust-a"), "key", key),
               json.dumps({"fingerprint": fingerprint(JOB), "job_id": job_id}), ex=600)
    timer = threading.Timer(1.0, freeze, args=(True,))
    timer.start()
    try:
        seconds, reply = retried(api, key)
    finally:
        timer.join()
        freeze(False)
    print(f"\nretry on a hung Redis answered in {seconds:.2f} s: {reply.status_code}")
    assert reply.status_code == 503 and reply.headers.get("Retry-After"), reply.text
    assert seconds < 1 + 5 + 1.5, seconds
    again = wait_for(lambda: (r := api.post("/api/jobs", json=JOB, headers={
        "Idempotency-Key": key})).status_code != 503 and r, timeout=20, every=0.5,
        message="an answer once Redis is back")
    assert again.status_code == 201, again.text
    assert jobs_in(client) == {job_id}
