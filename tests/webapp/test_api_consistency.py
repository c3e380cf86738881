"""Small inconsistencies a web developer met integrating with ``emp api`` (real server, real
Redis, real workers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from rest_helpers import ADMIN, TOKEN_A, TOKENS_ENV, Api, event_names, submit_state

from capability_router.keys import Keys

pytestmark = pytest.mark.timeout(120)

JOB = {"service_required": "echo", "priority": 60, "payload": {"n": 1}}


def test_a_refused_keyed_submit_keeps_no_answer_and_its_retry_is_checked_again(
        start_server, client) -> None:
    """Tried: a customer's keyed POST /api/jobs naming a pool that does not exist yet (400),
    then an admin submit that makes the pool, then the same POST with the same key; and a
    keyed POST whose body fails the schema (400), sent twice. Before: the first refusal was
    stored and replayed (``Idempotent-Replayed: true``, 400 "does not exist") for the key's
    whole 24 h although the pool existed by then, while the schema's 400 was checked again
    (the README said both were replayed). Now no refusal is kept: each retry is checked
    afresh (201 once the pool exists), and a refusal writes nothing, not even a key."""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api, admin = Api(server.base, TOKEN_A), Api(server.base, ADMIN)
    body = {**JOB, "pool": "later"}
    before = submit_state(client)
    refused = api.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-pool"})
    assert refused.status_code == 400 and "does not exist" in refused.text, refused.text
    bad = {**JOB, "priority": "high"}
    for _ in range(2):
        schema = api.post("/api/jobs", json=bad, headers={"Idempotency-Key": "k-bad"})
        assert schema.status_code == 400 and "Idempotent-Replayed" not in schema.headers
    assert submit_state(client)[0] == before[0], "a refusal wrote a key"
    admin.submit(**{**JOB, "pool": "later"})  # an admin submit makes the pool
    again = api.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-pool"})
    assert again.status_code == 201, again.text
    assert "Idempotent-Replayed" not in again.headers
    replayed = api.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-pool"})
    assert (replayed.status_code, replayed.json()) == (201, again.json())
    assert replayed.headers["Idempotent-Replayed"] == "true"


def test_a_repeated_query_parameter_is_refused_naming_it(start_server, client) -> None:
    """Tried: ``GET /api/jobs?status=pending&status=cancelled`` (one pending and one
    cancelled job), ``?limit=1&limit=2``, and ``POST .../cancel?terminate=false&
    terminate=true``, and the webhook service's ``/deliveries/recent?limit=1&limit=2``.
    Before: only the first value was used, without a word (the listing
    showed the pending job alone, as if the other status had not been asked for). Now each
    is 400 naming the parameter, and the OpenAPI document says so of every query
    parameter."""
    api = Api(start_server("api", EMP_API_PROCESSES="1").base)
    pending = api.submit(**JOB)
    cancelled = api.submit(**JOB)
    assert api.post(f"/api/jobs/{cancelled}/cancel").status_code == 200
    for path, name in (("/api/jobs?status=pending&status=cancelled", "status"),
                       ("/api/jobs?limit=1&limit=2", "limit")):
        reply = api.get(path)
        assert reply.status_code == 400, (path, reply.text)
        assert reply.json()["error"].startswith(f"{name}: given 2 times"), reply.text
    reply = api.post(f"/api/jobs/{pending}/cancel?terminate=false&terminate=true")
    assert reply.status_code == 400 and "terminate" in reply.json()["error"], reply.text
    assert api.status(pending) == "pending"
    hooks = start_server("webhooks")
    reply = requests.get(f"{hooks.base}/deliveries/recent?limit=1&limit=2", timeout=10)
    assert reply.status_code == 400 and reply.json()["field"] == "limit", reply.text
    document = api.get("/api/openapi.json").json()
    listed = document["paths"]["/api/jobs"]["get"]["parameters"]
    assert all("at most once" in p["description"] for p in listed if p["in"] == "query")


def test_an_integer_parameter_too_large_is_refused_by_its_bound(start_server) -> None:
    """Tried: ``GET /api/jobs?offset=99999999999999999999`` (20 digits), ``?limit=`` 1,000
    digits and ``?offset=-`` 19 digits. Before, each was 400 "offset must be an integer", of a
    whole number; now each names the bound it is past, as ``?offset=2000000`` already did."""
    api = Api(start_server("api", EMP_API_PROCESSES="1").base)
    for query, said in (("offset=" + "9" * 20, "offset: 99999999999999999999 is greater "
                                                "than the maximum of 1000000"),
                        ("limit=" + "1" * 1000, "limit: 11111111111111111111... (1000 "
                                                "characters) is greater than the maximum of 500"),
                        ("offset=-" + "1" * 19, "offset: -1111111111111111111 is less than "
                                                "the minimum of 0"),
                        ("offset=2000000", "offset: 2000000 is greater than the maximum of "
                                           "1000000")):
        reply = api.get(f"/api/jobs?{query}")
        assert reply.status_code == 400 and reply.json()["error"] == said, (query, reply.text)
    assert api.get("/api/jobs?offset=1x").json()["error"] == "offset must be an integer, got '1x'"


def test_a_value_of_the_wrong_type_is_told_in_json_words(start_server, client) -> None:
    """Tried: POST /api/jobs with the bodies null, [] and "x", a ``priority`` of "high" and
    of 50.0, a ``payload`` of [], and a ``service_required`` of 5. Before, each answer
    spoke Python: "None is not of type 'object'", "priority: 'high' is not of type
    'integer'". Now they say what the field must be and what came, in JSON: null, "high".
    Nothing is written. Also ``GET /api/pools/default/metrics?window=2h`` (an enum)."""
    api = Api(start_server("api", EMP_API_PROCESSES="1").base)
    before = submit_state(client)
    for body, said in (("null", "the body must be a JSON object, got null"),
                       ("[]", "the body must be a JSON object, got []"),
                       ('"x"', 'the body must be a JSON object, got "x"'),
                       ('{"service_required": "echo", "priority": "high"}',
                        'priority: must be an integer, got "high"'),
                       ('{"service_required": "echo", "priority": 50.0}',
                        "priority: must be an integer, got 50.0"),
                       ('{"service_required": "echo", "payload": []}',
                        "payload: must be a JSON object, got []"),
                       ('{"service_required": 5}', "service_required: must be a string, got 5"),
                       # Before: "'x y' does not match '^[A-Za-z0-9_.:\\\\-]{1,128}$'" (the
                       # pattern's repr doubled each backslash, JSON doubled them again)
                       ('{"service_required": "echo", "customer_id": "x y"}',
                        'customer_id: "x y" does not match ^[A-Za-z0-9_.:\\-]{1,128}$'),
                       ('{"service_required": "echo", "workflow_datetime": ""}',
                        'workflow_datetime: must be a date-time, got ""')):
        reply = api.post("/api/jobs", data=body, headers={"Content-Type": "application/json"})
        assert (reply.status_code, reply.json()["error"]) == (400, said), (body, reply.text)
    assert submit_state(client) == before
    # A value outside a list: before, "'2h' is not one of ['1h', '24h']".
    reply = api.get("/api/pools/default/metrics?window=2h")
    assert (reply.status_code, reply.json()["error"]) == (
        400, 'window: must be one of "1h", "24h", got "2h"'), reply.text


def _empty_fields(value: Any, where: str = "") -> list[str]:
    """Where ``value`` holds an empty string."""
    if value == "":
        return [where]
    if isinstance(value, dict):
        return [hit for key, item in value.items() for hit in _empty_fields(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [hit for n, item in enumerate(value) for hit in _empty_fields(item, f"{where}[{n}]")]
    return []


def test_no_event_of_a_job_life_cycle_carries_an_empty_string(
        start_server, start_worker, client) -> None:
    """Tried: a job submitted, cancelled while pending, retried, then run to completion;
    and a job that fails once and is retried by its worker before it completes. Every
    event of both read from the job's stream. Before: ``job_cancelled`` of the pending
    job carried ``"worker_id": ""`` (it never ran: it has no worker). Now a field with no
    value is left out, as ``job_submitted`` leaves out what a job lacks; the event of a
    running job still names its worker."""
    api = Api(start_server("api", EMP_API_PROCESSES="1").base)
    first = api.submit(**JOB)
    assert api.post(f"/api/jobs/{first}/cancel").status_code == 200
    assert api.post(f"/api/jobs/{first}/retry").status_code == 200
    start_worker("w1")
    flaky = api.submit(service_required="echo", payload={"fail_times": 1}, max_retries=1)
    for job_id in (first, flaky):
        api.wait_status(job_id, "completed")
    found = {}
    for job_id in (first, flaky):
        for _, fields in client.xrange(Keys("default").job_events(job_id)):
            found[f"{job_id} {fields['event']}"] = json.loads(fields["data"])
    assert event_names(client, flaky).count("job_started") == 2, found
    empty = {name: hits for name, data in found.items() if (hits := _empty_fields(data))}
    assert empty == {}, empty
    cancelled = found[f"{first} job_cancelled"]
    assert "worker_id" not in cancelled and cancelled["reason"], cancelled


