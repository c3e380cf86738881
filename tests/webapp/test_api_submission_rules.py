"""Submission rules the schema alone did not carry, and 405s that say what is allowed."""

from __future__ import annotations

import pytest
from rest_helpers import Api, snapshot

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def api(client, start_server) -> Api:
    return Api(start_server("api").base)


def test_workflow_datetime_must_be_a_date_time(api, client) -> None:
    """Tried: an empty string (before: accepted as if absent, though the schema says
    date-time), a month 13, a bare word; each 400 naming the field, nothing written. A
    timestamp with its offset, and epoch ms, are accepted."""
    api.submit(service_required="echo")
    before = snapshot(client)
    for value in ("", "2026-13-01T00:00:00Z", "soon", " "):
        reply = api.post("/api/jobs", json={"service_required": "echo",
                                            "workflow_datetime": value})
        assert reply.status_code == 400, (value, reply.text)
        assert "workflow_datetime" in reply.json()["error"], (value, reply.text)
    assert snapshot(client) == before
    assert api.submit(service_required="echo", workflow_datetime="2026-01-02T03:04:05Z")
    assert api.submit(service_required="echo", workflow_datetime=1_767_225_600_000)


def test_a_body_with_both_message_id_and_job_id_is_refused_by_the_schema_too(
        api, client) -> None:
    """Tried: message_id "a" with job_id "b" (before: a body the OpenAPI schema accepted got
    a 400, so the document and the server disagreed), and both the same. Two ids for one
    job: a client would rather hear which field to drop than have one guessed, so the
    server keeps refusing and the schema now says so (a ``not`` of both present). The
    document refuses it, the server answers 400 naming both fields, nothing written;
    null in one of them is no second id."""
    from jsonschema import Draft4Validator

    from webapp.api.validation import to_json_schema

    document = api.get("/api/openapi.json").json()
    schemas = document["components"]["schemas"]
    validator = Draft4Validator(to_json_schema(schemas["JobSubmission"]))
    api.submit(service_required="echo")
    before = snapshot(client)
    for body in ({"service_required": "echo", "message_id": "a", "job_id": "b"},
                 {"service_required": "echo", "message_id": "a", "job_id": "a"}):
        assert not validator.is_valid(body), body
        reply = api.post("/api/jobs", json=body)
        assert reply.status_code == 400, (body, reply.text)
        assert "message_id and job_id" in reply.json()["error"], reply.text
    assert snapshot(client) == before
    body = {"service_required": "echo", "message_id": None, "job_id": "only-one"}
    assert validator.is_valid(body) and api.submit(**body) == "only-one"


def test_service_aliases_that_disagree_are_refused_naming_both(api, client) -> None:
    """Tried: service_required "echo" with type "simulation", and with job_type
    "simulation" (before: the first silently won and ran). 400 naming both fields and
    values, nothing written; aliases that agree are accepted."""
    api.submit(service_required="echo")
    before = snapshot(client)
    for alias in ("type", "job_type"):
        reply = api.post("/api/jobs", json={"service_required": "echo", alias: "simulation"})
        assert reply.status_code == 400, (alias, reply.text)
        error = reply.json()["error"]
        assert "service_required 'echo'" in error and f"{alias} 'simulation'" in error, error
    assert snapshot(client) == before
    job_id = api.submit(service_required="echo", type="echo", job_type=None)
    assert api.job(job_id)["service_required"] == "echo"


def test_405_names_the_allowed_methods(api) -> None:
    """Tried: DELETE /api/jobs and PUT /api/jobs/<id> (before: 405 without Allow)."""
    reply = api.delete("/api/jobs")
    assert reply.status_code == 405 and reply.json()["success"] is False
    assert {"GET", "POST"} <= {m.strip() for m in reply.headers["Allow"].split(",")}
    reply = api.session.put(api.base + "/api/jobs/some-id", timeout=10)
    assert reply.status_code == 405
    assert "GET" in {m.strip() for m in reply.headers["Allow"].split(",")}
