"""Strings customers (and machines) control are shown as text on every page, in Chromium.

A hostile tenant submits jobs through the REST API, the client socket and
Celery whose payload keys and values, custom requirements, error messages
and results carry markup; a machine reports markup as its name, host and
GPU; a webhook URL carries it; progress events carry it live. Every page of
the monitor and of Flower is opened (and kept open while the live events
arrive): no script runs, no element is injected, no attribute breaks out,
and the strings are there as text. The browser bypasses the monitor's
Content Security Policy here, so it is the escaping that is checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests
from test_monitor_browser import open_page  # noqa: F401 - the page fixture

from capability_router.keys import Keys
from capability_router.registry import WorkerRegistry
from conftest import wait_for
from emp_tasks.producer import get_job, submit
from emp_tasks.websocket_client import WebSocketClient as Client
from machine.status import now_ms, publish
from webapp.monitor.webhooks import hook_store

pytestmark = pytest.mark.timeout(240)

PROBE = """() => ({pwned: window.__pwned || [], injected: document.querySelectorAll(
    '.pwnmark, img[src="x"], [data-pwn]').length})"""


def hostile(tag: str) -> str:
    """Markup that, rendered anywhere as HTML or in an attribute, records ``tag``."""
    run = f"(window.__pwned=window.__pwned||[]).push('{tag}')"
    return (f'"\'><img src=x onerror="{run}"><b class="pwnmark">{tag}</b>'
            f"<script>{run}</script><svg onload=\"{run}\"></svg>' data-pwn='1")


def test_no_customer_string_runs_or_renders_as_markup_on_any_page(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        open_page: Callable[..., Any], client: redis.Redis, app: Any) -> None:  # noqa: F811
    api = start_server("api")
    monitor = start_server("monitor")
    start_worker("w1")
    rest = requests.post(api.base + "/api/jobs", timeout=10, json={
        "service_required": "simulation", "customer_id": "tenant-1",
        "payload": {"steps": 2, "duration": 0.2, "note": hostile("note"),
                    hostile("key"): [hostile("item")]}}).json()["job_id"]
    failing = requests.post(api.base + "/api/jobs", timeout=10, json={
        "service_required": "simulation", "max_retries": 0,
        # its error quotes the value: an unknown failure type (a size that is no number,
        # which this used, is refused at submit since stop 34)
        "payload": {"steps": 1, "failure_type": hostile("error")}}).json()["job_id"]
    stuck = requests.post(api.base + "/api/jobs", timeout=10, json={
        "service_required": "simulation", "payload": {"steps": 1},
        "requirements": {"hardware": {"gpu_memory_gb": 99},
                         hostile("rk").replace(".", ""): hostile("rv")}}).json()["job_id"]
    socket = Client.connect(api.ws_base + "/ws/client/tenant-app")
    try:
        socket.receive(timeout=10)  # connection_established
        socket.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                                "payload": {"steps": 1, "duration": 0.1,
                                            "x": hostile("socket")}}))
        by_socket = json.loads(socket.receive(timeout=10))["job_id"]
    finally:
        socket.close()
    by_celery = submit("simulation", {"steps": 1, "duration": 0.1, "c": hostile("celery")},
                       app=app).id
    machine = hostile("machine-id")
    publish(client, {
        "machine_id": machine, "status": "online",
        "hostname": hostile("host"), "health_url": "http://box:9090", "started_at": now_ms(),
        "last_report": now_ms(), "uptime_seconds": 5.0, "gpu_source": hostile("gpu-source"),
        "gpus": [{"index": 0, "name": hostile("gpu"), "memory_gb": 24}],
        "workers": [], "services": [], "log_dropped": 0}, emit=True)
    WorkerRegistry(client).heartbeat({
        "worker_id": "box-w1", "machine_id": machine, "services": ["simulation"],
        "hardware": {"gpu_memory_gb": 24, "gpu_model": hostile("gpu-model")},
        "models": {"simulation": [hostile("model")]}, "customer_access": {},
        "workflow_id": None, "custom": {hostile("ck"): hostile("cv")}},
        ["default"], [], 60_000, first=True)
    hook_store(client).create({"url": "https://hooks.example.com/" + hostile("url"),
                               "events": ["complete_job"]})
    for job_id in (rest, failing, by_socket, by_celery):
        wait_for(lambda j=job_id: get_job(j, app=app)["status"] in ("completed", "failed"),
                 timeout=60, message=f"{job_id} to end")
    assert get_job(failing, app=app)["status"] == "failed"
    assert "pwnmark" in get_job(failing, app=app)["last_error"]  # the error carries it

    jobs = [rest, failing, stuck, by_socket, by_celery]
    pages = ["/machines", "/queue", "/jobs", "/submit", "/webhooks", "/pools", "/",
             "/workers", "/tasks", *[f"/jobs/{j}" for j in jobs],
             *[f"/task/{j}" for j in (rest, failing, by_celery)]]
    page = open_page(None)
    for path in pages:
        page.goto(monitor.base + path)
        if path in ("/", "/workers", "/tasks") or path.startswith("/task/"):  # Flower's
            page.wait_for_load_state("networkidle")
        else:  # an EMP page holds its live stream open (shared by the tabs): never idle
            page.wait_for_selector('#emp-live[data-state="live"]', timeout=15_000)
            page.wait_for_selector("#s-service option" if path == "/submit"
                                   else "#emp-updated:not(:empty)", state="attached")
        time.sleep(0.3)  # a failed image load runs its handler late
        assert page.evaluate(PROBE) == {"pwned": [], "injected": 0}, path
    # The strings are there, as text (inside JSON too, where quotes are escaped).
    page.goto(f"{monitor.base}/jobs/{rest}")
    page.wait_for_selector('#job-status[data-status="completed"]')
    assert "note</b>" in page.inner_text("#job-payload")
    assert "note</b>" in page.inner_text("#job-outcome")
    page.goto(f"{monitor.base}/jobs/{failing}")
    page.wait_for_selector('#job-status[data-status="failed"]')
    assert "error</b>" in page.inner_text("#job-outcome")
    page.goto(monitor.base + "/machines")
    page.wait_for_selector(".emp-machine")
    page.wait_for_selector('tr[data-worker-id="box-w1"]')
    shown = page.inner_text("#machines-list")
    for tag in ("machine-id", "host", "gpu", "gpu-source", "gpu-model", "model", "ck", "cv"):
        assert f"{tag}</b>" in shown, tag
    assert page.get_attribute(".emp-machine", "data-machine-id") == machine

    # Live: hostile progress events reach open pages through the event stream.
    watching = open_page(f"{monitor.base}/jobs/{stuck}")
    listing = open_page(monitor.base + "/jobs")
    listing.wait_for_selector(f'#jobs-table tr[data-job-id="{stuck}"]')
    client.xadd(Keys("default").events, {"event": "update_job_progress", "job_id": stuck,
                                          "data": json.dumps({
                                              "job_id": stuck, "progress": 40,
                                              "message": hostile("progress"),
                                              hostile("field"): hostile("value")})})
    watching.wait_for_function(
        "document.getElementById('job-progress-message').textContent.includes('pwnmark')")
    time.sleep(0.5)
    for live in (watching, listing):
        assert live.evaluate(PROBE) == {"pwned": [], "injected": 0}, live.url
    watching.click(".timeline-toggle")  # the progress event's own fields
    watching.wait_for_selector("tr.progress-event")
    assert "value</b>" in watching.inner_text("#job-timeline")
    assert watching.evaluate(PROBE) == {"pwned": [], "injected": 0}
