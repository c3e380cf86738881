"""Chosen job ids that would name another job's keys, over real HTTP (gunicorn, Redis,
a worker)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from rest_helpers import TOKEN_A, TOKEN_B, TOKENS_ENV, Api, assert_nothing_submitted, submit_state

from capability_router.keys import Keys

JOBS = Keys("default")


def _submit(api: Api, **body: Any) -> requests.Response:
    return api.post("/api/jobs", json={"service_required": "echo", **body})


@pytest.mark.timeout(120)
def test_an_id_naming_another_jobs_event_stream_is_a_400_and_writes_nothing(
    client, start_server, start_worker
) -> None:
    """Tried: customer B posts message_id "order-7:events" while customer A's job "order-7"
    exists (its event stream is the key ``job:order-7:events``), and A posts
    "plan:events" before "plan". Before the fix the first was a 500 (WRONGTYPE reading
    the stream as a record); the second was a 201, after which "plan" failed half way:
    an error answered, yet the job left pending where no claim could finish it."""
    server = Api(start_server("api", **TOKENS_ENV).base)
    alice, bob = server.as_(TOKEN_A), server.as_(TOKEN_B)
    assert (
        alice.submit(service_required="echo", message_id="order-7", payload={"n": 1}) == "order-7"
    )
    before = submit_state(client)
    for api, job_id in ((bob, "order-7:events"), (alice, "plan:events")):
        refused = _submit(api, message_id=job_id)
        assert refused.status_code == 400, refused.text
        assert ":events" in refused.json()["error"]
    assert_nothing_submitted(client, before)
    assert bob.get("/api/jobs/order-7:events").status_code == 404
    assert alice.submit(service_required="echo", message_id="plan", payload={"n": 2}) == "plan"
    start_worker("w1")
    assert alice.wait_status("plan", "completed")["result"]["echo"] == {"n": 2}
    assert alice.wait_status("order-7", "completed")["result"]["echo"] == {"n": 1}


@pytest.mark.timeout(60)
def test_dot_segment_ids_are_a_400_and_write_nothing(client, start_server) -> None:
    """Tried: POST /api/jobs with message_id "." and job_id "..", then reading the job back
    with requests, as the README's client does. Before the fix both were a 201, yet
    requests (like curl and browsers, RFC 3986) drops such a path segment:
    GET /api/jobs/.. asked for /api/ (404) and POST /api/jobs/./cancel reached no
    job, so the job could never be read or cancelled over REST. Now a 400 says why, and
    ids merely made of dots and more ("...", "v1.2") are still ids."""
    api = Api(start_server("api", **TOKENS_ENV).base).as_(TOKEN_A)
    assert api.submit(service_required="echo", message_id="...") == "..."
    before = submit_state(client)
    for field, job_id in (("message_id", "."), ("job_id", "..")):
        refused = _submit(api, **{field: job_id})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"].startswith(f"{field}: "), refused.text
        assert "path segment" in refused.json()["error"]
    assert_nothing_submitted(client, before)
    assert api.job("...")["job_id"] == "..."
    assert api.submit(service_required="echo", message_id="v1.2") == "v1.2"
