"""Pool names '.' and '..' over HTTP and WebSocket: refused where a submit would make such a
pool, while a Redis that already holds one is still served. Real ``emp api`` and
``emp monitor`` processes, real Redis."""

from __future__ import annotations

import json

import pytest
import redis
import requests
from rest_helpers import ADMIN, TOKENS_ENV, Api, assert_nothing_submitted, submit_state
from test_idempotency_hang import _receive

from capability_router.functions import QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import NAMESPACES_KEY
from emp_tasks.websocket_client import WebSocketClient as Client

pytestmark = pytest.mark.timeout(120)

#: What the monitor's own page sends with a submit (its cross-site guard).
SAME_ORIGIN = {"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"}


def test_submits_naming_a_dot_pool_are_a_400_and_make_no_pool(
        client: redis.Redis, start_server) -> None:
    """Tried, with an admin token (which may make pools): POST /api/jobs with pool ".."
    and ".", and with requirements {"pool": ".."}; the client socket's submit_job with
    pool ".."; the monitor's Submit with pool ".". Before the fix each was filed (201 /
    job_submitted), making the pool for good in the set of pools, yet
    /api/pools/../metrics can never be reached: HTTP clients drop such a path segment.
    Now each is refused naming the field, nothing is written, and "..." is still a pool
    name an admin may make."""
    server = start_server("api", **TOKENS_ENV)
    monitor = start_server("monitor")
    admin = Api(server.base).as_(ADMIN)
    ws = Client.connect(f"{server.ws_base}/ws/client/dots?token={ADMIN}")
    try:
        assert _receive(ws)["type"] == "connection_established"
        before, pools = submit_state(client), client.smembers(NAMESPACES_KEY)  # socket open
        for body, field in (({"pool": ".."}, "pool"), ({"pool": "."}, "pool"),
                            ({"requirements": {"pool": ".."}}, "requirements.pool")):
            refused = admin.post("/api/jobs", json={"service_required": "echo", **body})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"].startswith(f"{field}: "), refused.text
            assert "path segment" in refused.json()["error"], refused.text
        ws.send(json.dumps({"type": "submit_job", "service_required": "echo", "pool": ".."}))
        answer = _receive(ws)
        assert answer["type"] == "error" and answer["status"] == 400, answer
        assert answer["error"].startswith("pool: ") and "path segment" in answer["error"], (
            answer)
        reply = requests.post(monitor.base + "/emp/api/submit", timeout=10,
                              headers={**SAME_ORIGIN, "Origin": monitor.base},
                              data=json.dumps({"service_required": "echo", "pool": "."}))
        assert reply.status_code == 400, reply.text
        assert "pool: " in reply.text and "path segment" in reply.text, reply.text
        assert_nothing_submitted(client, before)
        assert client.smembers(NAMESPACES_KEY) == pools
    finally:
        ws.close()
    assert admin.submit(service_required="echo", pool="...")
    assert "..." in client.smembers(NAMESPACES_KEY)


def test_a_redis_already_holding_a_dot_pool_is_still_served(
        client: redis.Redis, start_server) -> None:
    """Tried: a Redis holding pool '..' (made before such names were refused) with a
    pending job in it, then GET /api/pools, GET /api/jobs, GET /api/jobs/<its id> and
    the monitor's pools page data (/emp/api/pools). Each answers 200 and shows the pool:
    readers that build the keys of every known pool still accept the name (only new
    pools are refused)."""
    client.sadd(NAMESPACES_KEY, "..")
    spec = JobSpec(service="echo")
    spec.pool = ".."  # as a submit filed it before the fix (JobSpec now refuses it)
    QueueFunctions(client, "..").enqueue("old-dots", spec, "{}")
    server = start_server("api", **TOKENS_ENV)
    monitor = start_server("monitor")
    admin = Api(server.base).as_(ADMIN)
    listed = admin.get("/api/pools")
    assert listed.status_code == 200, listed.text
    assert ".." in [pool["name"] for pool in listed.json()["pools"]], listed.text
    jobs = admin.get("/api/jobs")
    assert jobs.status_code == 200, jobs.text
    assert "old-dots" in jobs.text
    assert admin.job("old-dots")["pool"] == ".."
    page = requests.get(monitor.base + "/emp/api/pools", timeout=10)
    assert page.status_code == 200, page.text
    assert '".."' in page.text, page.text
