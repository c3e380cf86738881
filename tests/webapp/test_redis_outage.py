"""Redis down: the API and the monitor answer 503 with a short reason and Retry-After.

Before, ``POST /api/jobs``, ``GET /api/jobs/<id>`` and the monitor's
``/health`` answered 500 and logged a traceback per request. The servers
here use their own Redis (a ``LocalRedis`` this test stops and starts), so
the module's shared server is untouched.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import requests
from rest_helpers import Api

from conftest import wait_for
from emp_tasks.local_redis import LocalRedis

pytestmark = pytest.mark.timeout(180)


def _unavailable(reply: requests.Response, what: str) -> None:
    assert reply.status_code == 503, (what, reply.status_code, reply.text[:300])
    assert reply.headers.get("Retry-After", "").isdigit(), what
    body = reply.json()
    assert body["success"] is False and "redis" in body["error"].lower(), (what, body)
    assert len(body["error"]) < 200, (what, body)


def test_api_and_monitor_answer_503_while_redis_is_down_and_log_the_outage_once(
        start_server, tmp_path: Path) -> None:
    """Tried: with the servers' Redis stopped, three rounds of POST /api/jobs,
    GET /api/jobs/<id> and the monitor's /health; then Redis back and the same calls.
    Each refusal is a 503 with Retry-After; each log has no traceback, one line when the
    outage starts and one when it ends."""
    private = LocalRedis(tmp_path / "private", appendonly=True).start()
    try:
        api_server = start_server("api", EMP_REDIS_URL=private.url, EMP_API_PROCESSES="1")
        monitor = start_server("monitor", EMP_REDIS_URL=private.url)
        api = Api(api_server.base)
        job_id = api.submit(service_required="echo")
        private.stop()
        for _ in range(3):
            _unavailable(api.post("/api/jobs", json={"service_required": "echo"}),
                         "POST /api/jobs")
            _unavailable(api.get(f"/api/jobs/{job_id}"), "GET /api/jobs/<id>")
            _unavailable(requests.get(monitor.base + "/health", timeout=30), "monitor /health")
        private.start()
        wait_for(lambda: api.get(f"/api/jobs/{job_id}").status_code == 200, timeout=30,
                 message="the API answering again")
        assert api.post("/api/jobs", json={"service_required": "echo"}).status_code == 201
        wait_for(lambda: requests.get(monitor.base + "/health", timeout=10).status_code == 200,
                 timeout=30, message="the monitor answering again")
    finally:
        private.stop(kill=True)
    for server in (api_server, monitor):
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert len(re.findall("Redis unreachable", log)) == 1, log[-3000:]
        assert len(re.findall("Redis reachable again", log)) == 1, log[-3000:]


def test_every_redis_backed_operation_documents_the_503_it_answers(start_server,
                                                                   tmp_path: Path) -> None:
    """Tried: every operation of the OpenAPI document called (path parameters filled in,
    a valid body where one is needed) while the API's Redis is stopped. Before the fix
    the document listed 503 for /health only, though each of these answered 503 with
    Retry-After: a client generated from it had no word for the outage. Now each operation
    but /health, /version and the document itself lists 503 (the shared ``Unavailable``
    response, with its Retry-After header), and every answer is one it documents."""
    private = LocalRedis(tmp_path / "private").start()
    try:
        server = start_server("api", EMP_REDIS_URL=private.url, EMP_API_PROCESSES="1")
        api = Api(server.base)
        document = api.get("/api/openapi.json").json()
        unavailable = document["components"]["responses"]["Unavailable"]
        assert "Retry-After" in unavailable["headers"]
        assert unavailable["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
        private.stop()
        bodies = {"/api/jobs": {"service_required": "echo"},
                  "/api/models/{name}": {"url": "https://x.test/m", "size": 1, "sha256": "0" * 64}}
        answered = {}
        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                statuses = operation["responses"]
                if path in ("/health", "/version", "/api/openapi.json"):
                    continue
                assert statuses.get("503") == {"$ref": "#/components/responses/Unavailable"}, (
                    method, path)
                url = re.sub(r"\{[a-z_]+\}", "x", path)
                json_body = bodies.get(path) if "requestBody" in operation else None
                reply = api.session.request(method, server.base + url, json=json_body,
                                            timeout=30)
                answered[f"{method.upper()} {path}"] = reply.status_code
                assert str(reply.status_code) in statuses, (method, path, reply.text[:300])
        assert sum(status == 503 for status in answered.values()) >= 10, answered
    finally:
        private.stop(kill=True)


def test_webhook_delivery_and_the_api_reaper_log_a_refused_outage_once(
        start_server, tmp_path: Path) -> None:
    """Tried: the webhook service (a consumer and eight dispatcher threads) and the API
    (its machine reaper every second) on their own Redis, stopped for 5 s (connections
    refused) while a request is sent to each, then started again.

    Before the fix each delivery thread logged "webhook dispatcher: Redis unavailable
    (...); retrying" (or "webhook consumer: ...") once a second, and the reaper
    "machine reaper: Error 111 connecting ...; retrying next period" once a period.
    Now each service says "Redis unreachable" once when the outage starts and "Redis
    reachable again" once when it ends, whichever thread met it first.
    """
    private = LocalRedis(tmp_path / "private", appendonly=True).start()
    try:
        api_server = start_server("api", EMP_REDIS_URL=private.url, EMP_API_PROCESSES="1",
                                  EMP_MACHINE_REPORT_SECONDS="1")
        hooks = start_server("webhooks", EMP_REDIS_URL=private.url)
        wait_for(lambda: requests.get(hooks.base + "/health", timeout=5).json()["delivery"]
                 ["running"], timeout=20, message="the webhook service's delivery threads")
        private.stop()
        time.sleep(2.5)
        _unavailable(requests.get(api_server.base + "/api/jobs", timeout=30), "GET /api/jobs")
        _unavailable(requests.get(hooks.base + "/webhooks", timeout=30), "GET /webhooks")
        time.sleep(2.5)
        private.start()
        for url in (api_server.base + "/api/jobs", hooks.base + "/webhooks"):
            wait_for(lambda u=url: requests.get(u, timeout=10).status_code == 200,
                     timeout=20, message=f"{url} to answer again")
        for server in (api_server, hooks):
            wait_for(lambda s=server: "Redis reachable again" in s.log_path.read_text(),
                     timeout=10, message=f"{server.command} to say Redis is back")
        # read while Redis still runs: stopped, the reaper (every second) meets the end
        # of this test's server as an outage of its own, and says so
        logs = {server.command: server.log_path.read_text(errors="replace")
                for server in (api_server, hooks)}
    finally:
        private.stop(kill=True)
    for server, chatter in ((api_server, "machine reaper"), (hooks, "Redis unavailable")):
        log = logs[server.command]
        assert "Traceback" not in log, log[-3000:]
        assert log.count("Redis unreachable") == 1, log[-3000:]
        assert log.count("Redis reachable again") == 1, log[-3000:]
        assert chatter not in log, log[-3000:]


#: Seconds the webhook service runs before its Redis is started.
DOWN_AT_START_SECONDS = 5.0


@pytest.mark.parametrize("service", ["webhooks", "api"])
def test_a_service_started_before_its_redis_says_so_once_and_once_when_it_answers(
        service: str, start_server, tmp_path: Path) -> None:
    """Tried: ``emp webhooks`` (and ``emp api``, one process) started while its Redis is
    down (connections refused), the Redis started 5 s later; the service's log read once
    it works (delivery threads running; a submit taken).

    Before the fix the webhook service's start-up logged "webhook service: waiting for
    Redis (Error 111 connecting ...)" once a second (5 lines here), beside the "Redis
    unreachable" its /health logged, and the API logged a traceback as it could not load
    its function library. Now the process says the outage once, whichever of them meets
    it first, and once that Redis answers; then it works.
    """
    private = LocalRedis(tmp_path / "private")  # not started: its port refuses
    later = threading.Timer(DOWN_AT_START_SECONDS, private.start)
    later.start()
    try:
        server = start_server(service, EMP_REDIS_URL=private.url,  # waits for /health
                              EMP_API_PROCESSES="1")
        later.join()
        if service == "webhooks":
            wait_for(lambda: requests.get(server.base + "/health", timeout=5).json()
                     ["delivery"]["running"], timeout=20,
                     message="the webhook service's delivery threads")
            assert requests.get(server.base + "/webhooks", timeout=10).status_code == 200
        else:
            answer = requests.post(server.base + "/api/jobs", json={
                "service_required": "echo", "payload": {}}, timeout=10)
            assert answer.status_code == 201, answer.text
        log = server.log_path.read_text(errors="replace")  # before this test stops Redis
    finally:
        later.cancel()
        later.join()
        private.stop(kill=True)
    assert "Traceback" not in log, log[-3000:]
    assert len(re.findall("waiting for Redis|Redis unreachable", log)) == 1, log[-3000:]
    assert log.count("Redis reachable again") == 1, log[-3000:]


#: Flower's own routes that reach Redis (inspector, result backend, control API), with
#: their method.
FLOWER_REDIS_CALLS = (("GET", "/api/workers?refresh=1"), ("GET", "/api/task/result/nope"),
                      ("GET", "/worker/celery@nope"), ("POST", "/api/task/revoke/nope"))


def test_flowers_own_pages_and_api_answer_503_while_redis_refuses_and_log_it_once(
        start_server, tmp_path: Path) -> None:
    """Tried: the monitor (``--basic_auth``) on its own Redis, stopped (connections
    refused); three rounds of Flower's Redis-reaching requests (an inspector refresh, a
    worker's page, a task result, a revoke) and its Workers page, and a worker's page
    without credentials; then Redis started.

    Before the fix the refresh answered 200 with stale workers, the worker's page 404
    "Unknown worker", the result and the revoke 503 without Retry-After, the revoke after
    12 s of kombu's reconnects; the log had a warning per inspect method, per blocking
    call and per 503. Now each answers 503 with Retry-After and "Redis is unreachable" in
    plain text, the Workers page (Flower's memory) still 200, a request without
    credentials still 401 (the gate comes after the login), and the log says the outage
    once and its end once.
    """
    private = LocalRedis(tmp_path / "private").start()
    try:
        monitor = start_server("monitor", EMP_REDIS_URL=private.url,
                               FLOWER_BASIC_AUTH="ops:pw")
        ops = requests.Session()
        ops.auth = ("ops", "pw")
        assert ops.get(monitor.base + "/api/workers?refresh=1", timeout=10).status_code == 200
        private.stop()
        for _ in range(3):
            for method, path in FLOWER_REDIS_CALLS:
                reply = ops.request(method, monitor.base + path, timeout=30)
                assert reply.status_code == 503, (path, reply.status_code, reply.text[:300])
                assert reply.headers.get("Retry-After", "").isdigit(), path
                assert reply.text.startswith("Redis is unreachable"), (path, reply.text)
            assert ops.get(monitor.base + "/workers", timeout=30).status_code == 200
            assert requests.get(monitor.base + "/worker/celery@nope",
                                timeout=30).status_code == 401
        private.start()
        wait_for(lambda: ops.get(monitor.base + "/api/workers?refresh=1", timeout=10)
                 .status_code == 200, timeout=30, message="Flower's API answering again")
        log = monitor.log_path.read_text(errors="replace")  # before this test stops Redis
    finally:
        private.stop(kill=True)
    assert "Traceback" not in log, log[-3000:]
    for chatter in ("Inspect method", "Blocking operation", "] 503 "):  # tornado: "] 503 GET"
        assert chatter not in log, (chatter, log[-3000:])
    assert log.count("Redis unreachable") == 1, log[-3000:]
    assert log.count("Redis reachable again") == 1, log[-3000:]
