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
