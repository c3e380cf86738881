"""Readers of several pools' streams on a real Redis Cluster: the API's event hub (a
monitor WebSocket) and the webhook consumer see the events of pools on different masters."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from cluster_fixtures import *  # noqa: F403 - the cluster fixtures

from conftest import wait_for
from emp_tasks.websocket_client import WebSocketClient as Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TOKENS = {"EMP_API_TOKENS": "tok-a=cust-a", "EMP_ADMIN_TOKENS": "tok-admin"}
WEBHOOKS = {
    "EMP_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "EMP_WEBHOOK_INITIAL_DELAY_MS": "200",
    "EMP_WEBHOOK_NAMESPACE_REFRESH_SECONDS": "1",
}


def receive(ws: Client, timeout: float = 20.0) -> dict[str, Any]:
    text = ws.receive(timeout=timeout)
    if text is None:
        raise TimeoutError("no message within the timeout")
    return json.loads(text)


def test_event_hub_and_webhooks_see_both_pools(
        pools, start_cluster_worker, start_cluster_server, receiver) -> None:
    start_cluster_worker("w1", pools)
    api = start_cluster_server("api", **TOKENS)
    hooks = start_cluster_server("webhooks", **WEBHOOKS)
    sink = receiver(start=True)
    reply = requests.post(hooks.base + "/webhooks", json={
        "url": sink.url + "/hook", "events": ["job_submitted", "complete_job"]}, timeout=10)
    assert reply.status_code == 201, reply.text

    ws = Client.connect(f"{api.ws_base}/ws/monitor/mon-1?token=tok-admin")
    try:
        assert receive(ws)["type"] == "connection_established"
        ws.send(json.dumps({"type": "subscribe", "topics": ["jobs"]}))
        assert receive(ws)["type"] == "subscribed"
        jobs = {}
        for pool in pools:
            reply = requests.post(f"{api.base}/api/jobs", headers={
                "Authorization": "Bearer tok-a"},
                json={"service_required": "echo", "pool": pool}, timeout=10)
            assert reply.status_code == 201, reply.text
            jobs[reply.json()["job_id"]] = pool
        completed: set[str] = set()
        deadline = time.monotonic() + 60
        while completed != set(jobs) and time.monotonic() < deadline:
            message = receive(ws)
            if message.get("type") == "complete_job" and message.get("job_id") in jobs:
                completed.add(message["job_id"])
    finally:
        ws.close()
    assert completed == set(jobs), "the monitor socket missed a pool's completion"

    def hooked() -> set[str]:
        return {r.payload["data"]["job_id"] for r in sink.delivered()
                if r.payload["event_type"] == "complete_job"}
    wait_for(lambda: hooked() >= set(jobs), timeout=60,
             message="a complete_job webhook for each pool's job")
