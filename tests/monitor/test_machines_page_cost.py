"""What the Machines page downloads per refresh, in a real headless Chromium."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
import requests
from test_monitor_browser import open_page  # noqa: F401 - the page fixture

from capability_router.registry import WorkerRegistry
from conftest import wait_for
from machine.status import now_ms, publish


def publish_fleet(client: redis.Redis, machines: int, workers: int) -> list[dict[str, Any]]:
    """``machines`` live machine records of ``workers`` GPUs and workers each, every worker
    registered (as test_monitor_operator's large fleet); returns the records."""
    registry = WorkerRegistry(client)
    records = []
    for m in range(machines):
        machine = f"box-{m:03d}"
        programs = [{"name": f"simulation-{n}", "role": "worker", "kind": "simulation",
                     "worker_id": f"{machine}-simulation-{n}", "gpu": n, "port": None,
                     "state": "RUNNING", "pid": 1000 + n, "started": int(time.time() - 30)}
                    for n in range(workers)]
        record = {
            "machine_id": machine, "status": "online", "hostname": "host-" + machine,
            "health_url": f"http://{machine}:9090", "started_at": now_ms(),
            "last_report": now_ms(), "uptime_seconds": 60.0, "gpu_source": "mock",
            "gpus": [{"index": n, "name": "Mock GPU", "memory_gb": 24} for n in range(workers)],
            "workers": programs, "services": [], "log_dropped": 0}
        publish(client, record, emit=False)
        records.append(record)
        for program in programs:
            registry.heartbeat({
                "worker_id": program["worker_id"], "machine_id": machine,
                "services": ["simulation"], "hardware": {"gpu_memory_gb": 24},
                "models": {}, "customer_access": {}, "workflow_id": None},
                ["default"], [], 600_000, first=True)
    return records


def test_the_machines_page_reads_what_it_shows_and_nothing_when_the_fleet_is_unchanged(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        client: redis.Redis) -> None:
    """Tried: 60 machines of 8 workers on the Machines page, which reads the fleet at every
    refresh (every 5 s and on worker, machine and job events), then a machine event that
    changes nothing, then one that renames a machine's host. Before, every read was the
    whole view, uncompressed (445 KB here; 2.2 MB at 300 machines), changed or not. Now
    the page reads only the fields it shows (each capability profile once), gzipped, and
    a refresh of an unchanged fleet is a 304 with no body; a change still shows."""
    records = publish_fleet(client, machines=60, workers=8)
    monitor = start_server("monitor")
    whole = requests.get(monitor.base + "/emp/api/machines", timeout=30,
                         headers={"Accept-Encoding": "identity"})
    assert whole.status_code == 200 and len(whole.content) > 400_000, len(whole.content)
    refused = requests.get(monitor.base + "/emp/api/machines?view=cards", timeout=10)
    assert refused.status_code == 400
    assert refused.json()["error"] == "view must be 'full' or 'page', not 'cards'"
    reads: list[Any] = []
    page = open_page(None)
    page.on("response", lambda r: reads.append(r) if "/emp/api/machines" in r.url else None)
    page.goto(monitor.base + "/machines")
    page.wait_for_selector('#emp-live[data-state="live"]')
    wait_for(lambda: len(page.query_selector_all(".emp-machine")) == 60, timeout=20,
             message="60 machine cards")
    first = reads[0]
    body = first.request.sizes()["responseBodySize"]
    assert first.status == 200 and body * 20 < len(whole.content), (body, len(whole.content))
    assert first.headers.get("content-encoding") == "gzip"

    # The same record again, with its event: the page reads again and gets nothing new.
    with page.expect_response(lambda r: "/emp/api/machines" in r.url) as read:
        publish(client, records[0], emit=True)
    again = read.value
    assert again.status == 304, again.status
    assert again.request.sizes()["responseBodySize"] == 0
    assert len(page.query_selector_all(".emp-machine")) == 60
    assert page.query_selector('tr[data-worker-id="box-059-simulation-7"]') is not None
    assert "24 GB" in (page.text_content('tr[data-worker-id="box-059-simulation-7"]') or "")

    # A change reaches the page.
    seen = len(reads)
    publish(client, {**records[0], "hostname": "renamed-host"}, emit=True)
    card = '.emp-machine[data-machine-id="box-000"]'
    page.wait_for_function("s => document.querySelector(s).innerText.includes('renamed-host')",
                           arg=card, timeout=10_000)
    assert 200 in [read.status for read in reads[seen:]]
