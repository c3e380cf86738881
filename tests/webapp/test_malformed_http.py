"""Requests gunicorn refuses before the application sees them still get a JSON error.

What was tried, on a real ``emp api`` (gevent workers) and ``emp webhooks`` (threads):
raw requests with a ``Content-Length`` that is no number (schemathesis generated
``Content-Length: e``), a header name with a space in it, and a request line longer
than gunicorn's limit. Each got gunicorn's HTML error page, the only ``text/html``
answer of either JSON API; now the same status with the usual
``{"success": false, "error": ...}`` as ``application/json``, and the server keeps
answering.
"""

from __future__ import annotations

import json

import pytest
import requests
from rest_helpers import raw_answer

pytestmark = pytest.mark.timeout(120)

MALFORMED = {
    "a Content-Length that is no number": (
        b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: e\r\n\r\n", 400, "Content-Length"),
    "a header name with a space": (
        b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400, "Bad Name"),
    # Just over the limit (4,094), so gunicorn has read all of it: bytes left unread at its
    # close would reset the connection, which can lose the answer.
    "a request line over gunicorn's limit": (
        b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI Too Long"),
}


@pytest.mark.parametrize("service", ["api", "webhooks"])
def test_requests_gunicorn_refuses_are_answered_in_json(start_server, service: str) -> None:
    server = start_server(service)
    for what, (request, status, named) in MALFORMED.items():
        got, headers, body = raw_answer(server.port, request)
        assert got == status, f"{service}, {what}: {got} {body[:300]!r}"
        assert headers["content-type"] == "application/json", f"{service}, {what}: {headers}"
        assert int(headers["content-length"]) == len(body), f"{service}, {what}"
        answer = json.loads(body)
        assert answer["success"] is False, f"{service}, {what}: {answer}"  # the usual shape
        assert named.lower() in answer["error"].lower(), f"{service}, {what}: {answer}"
    # Still serving: the refusals changed nothing.
    assert requests.get(server.base + "/health", timeout=10).status_code == 200
