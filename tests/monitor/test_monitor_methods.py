"""The monitor's JSON endpoints answer a method they do not have with 405 and ``Allow``."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.timeout(60)


def test_405_names_the_allowed_methods(start_server) -> None:
    """Tried: GET on the submit action, DELETE on a job, PUT on the queue (before: 405
    without Allow, so a client could not tell what the path takes)."""
    monitor = start_server("monitor")
    for method, path, allowed in (("GET", "/emp/api/submit", "POST"),
                                  ("DELETE", "/emp/api/jobs/some-id", "GET"),
                                  ("PUT", "/emp/api/queue", "GET")):
        reply = requests.request(method, monitor.base + path, timeout=10)
        assert reply.status_code == 405, (method, path, reply.status_code)
        methods = {m.strip() for m in reply.headers.get("Allow", "").split(",")}
        assert allowed in methods and method not in methods, (method, path, methods)
        assert reply.json()["success"] is False
