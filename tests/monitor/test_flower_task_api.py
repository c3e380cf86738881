"""Flower's task API (``/api/task/async-apply|apply|send-task``) files EMP jobs, and bad
input is a 400 naming what is wrong, with nothing filed."""

from __future__ import annotations

import pytest
import requests

from capability_router.keys import Keys
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)

#: Submits an operator could make through Flower's API, each wrong in one way.
BAD_SUBMITS = (
    ("/api/task/send-task/nope", {}, "unknown task 'nope'"),
    ("/api/task/async-apply/emp.simulation", {"kwargs": {"steps": 1}, "priority": "high"},
     "priority"),
    ("/api/task/async-apply/emp.simulation", {"kwargs": {"steps": 1}, "pool": "Bad Pool!"},
     "Bad Pool!"),
    ("/api/task/async-apply/emp.simulation",
     {"kwargs": {"steps": 1}, "requirements": {"hardware": {"gpu_memory_gb": "x"}}},
     "gpu_memory_gb"),
    ("/api/task/apply/emp.simulation", {"kwargs": {"steps": 1}, "priority": "high"},
     "priority"),
)


def test_flowers_task_api_files_a_job_and_refuses_bad_input_with_400(start_server,
                                                                    client) -> None:
    """Tried: Flower's async-apply and send-task of ``emp.simulation`` (a job each), then a
    send-task of an unknown task, a priority "high", a malformed pool name, a GPU memory
    "x", and apply (Flower's synchronous call) with priority "high".

    Before: the two good submits filed their jobs, each bad one answered 500 with an
    empty body and put a traceback in the monitor's log (``InvalidJob`` escaping Flower's
    blocking runner). Now each answers 400 with the reason, nothing is filed, and the log
    holds no traceback."""
    monitor = start_server("monitor", FLOWER_UNAUTHENTICATED_API="true")
    keys = Keys("default")
    filed = []
    for path in ("/api/task/async-apply/emp.simulation", "/api/task/send-task/emp.simulation"):
        reply = requests.post(monitor.base + path,
                              json={"kwargs": {"steps": 1, "duration": 0.1}}, timeout=30)
        assert reply.status_code == 200, (path, reply.status_code, reply.text[:300])
        filed.append(reply.json()["task-id"])
    for job_id in filed:
        assert client.hget(keys.job(job_id), "status") == "pending", job_id
    before = client.zcard(keys.jobs)
    for path, body, reason in BAD_SUBMITS:
        reply = requests.post(monitor.base + path, json=body, timeout=30)
        assert reply.status_code == 400, (path, body, reply.status_code, reply.text[:300])
        assert reason in reply.text, (path, body, reply.text[:300])
    assert client.zcard(keys.jobs) == before  # nothing filed
    wait_for(lambda: "400 POST /api/task/apply" in monitor.log_path.read_text(),
             message="the monitor logging the last refusal")
    assert "Traceback" not in monitor.log_path.read_text(errors="replace"), monitor.log()
