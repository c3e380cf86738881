"""POST /api/jobs refuses a negative or fractional job size with a 400 naming the field."""

from __future__ import annotations

import pytest
from rest_helpers import Api, snapshot

pytestmark = pytest.mark.timeout(120)


def test_a_negative_size_is_a_400_naming_the_field_and_nothing_is_filed(
        client, start_server) -> None:
    """Tried: ``{"service_required": "simulation", "payload": {"steps": -20}}`` and a fractional
    ``tokens`` for text. Before, 200 with a job id: the size was taken as absent and the
    job ran and completed. Now 400 naming ``payload.steps`` (``payload.tokens``), nothing
    written to Redis."""
    api = Api(start_server("api").base)
    api.submit(service_required="echo")
    before = snapshot(client)
    for body, field in (({"service_required": "simulation", "payload": {"steps": -20}}, "steps"),
                        ({"service_required": "text", "payload": {"tokens": 1.5}}, "tokens")):
        reply = api.post("/api/jobs", json=body)
        assert reply.status_code == 400, (body, reply.text)
        assert f"payload.{field} must be a whole number" in reply.json()["error"], reply.text
    assert snapshot(client) == before
    assert api.submit(service_required="simulation", payload={"steps": 3, "duration": 0.1})
