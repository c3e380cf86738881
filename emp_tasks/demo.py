"""``emp demo``: a handful of jobs with different requirements, shown as they finish."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from capability_router.keys import DEFAULT_NAMESPACE
from capability_router.states import JobStatus
from emp_tasks.app import create_app
from emp_tasks.producer import get_job, submit
from emp_tasks.websocket_client import WebSocketClient

DEMO_JOBS: list[dict[str, Any]] = [
    {"service": "simulation", "payload": {"steps": 5, "duration": 1.0}},
    {"service": "simulation", "payload": {"steps": 4, "duration": 0.8},
     "requirements": {"hardware": {"gpu_memory_gb": 16}}, "priority": 80},
    {"service": "echo", "payload": {"prompt": "a red fox"},
     "requirements": {"models": ["sd15"]}},
    {"service": "echo", "payload": {"prompt": "a castle"},
     "requirements": {"models": ["flux"], "region": "local-a"}},
    {"service": "echo", "payload": {"fail_times": 1, "note": "fails once, then retries"}},
]


def run_demo(url: str, timeout: float = 60.0, console: Console | None = None) -> bool:
    """Submit the demo jobs and print a table; True when every job completed."""
    console = console or Console()
    app = create_app(url)
    submitted = [(spec, submit(app=app, **spec).id) for spec in DEMO_JOBS]
    console.print(f"submitted {len(submitted)} demo jobs to {url}")
    records = {job_id: get_job(job_id, app=app) for _, job_id in submitted}
    for line in _unserved(app, records.values(), f"waiting up to {timeout:g} s for one"):
        console.print(line)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = {job_id: get_job(job_id, app=app) for _, job_id in submitted}
        if all(JobStatus(r["status"]).is_terminal for r in records.values()):
            break
        time.sleep(0.2)
    table = Table(title="EMP demo jobs")
    for column in ("job", "service", "requirements", "priority", "worker", "attempts", "status"):
        table.add_column(column)
    for spec, job_id in submitted:
        record = records[job_id]
        table.add_row(job_id[:8], spec["service"],
                      json.dumps(spec.get("requirements", {})),  # as submitted
                      str(record.get("priority")), record.get("worker_id", ""),
                      str(record.get("attempts")), record["status"])
    console.print(table)
    waiting = [r for r in records.values() if not JobStatus(r["status"]).is_terminal]
    if waiting:
        console.print(f"demo: {len(waiting)} of {len(records)} jobs did not end within "
                      f"{timeout:g} s")
        for line in _unserved(app, waiting, "start one: `emp up`, or `emp worker` in "
                                            "another shell, then `emp demo` again"):
            console.print(line)
    app.close()
    return all(r["status"] == JobStatus.COMPLETED for r in records.values())


def _unserved(app: Any, records: Iterable[dict[str, Any]], then: str) -> list[str]:
    """A line per pool of ``records`` that no live worker serves: without one, the demo
    waited its whole timeout in silence and ended with a table of pending jobs."""
    from capability_router.pool_view import unserved_pools
    from emp_tasks.connection import get_client

    pools = sorted({r.get("pool") or DEFAULT_NAMESPACE for r in records})
    return [f"note: no live worker serves pool {pool}; {then}"
            for pool in unserved_pools(get_client(app.conf.broker_url), pools)]


def run_api_demo(api: str, timeout: float = 60.0, console: Console | None = None) -> bool:
    """Submit one job over REST and follow it on the client WebSocket; True if it completed."""
    console = console or Console()
    reply = requests.post(f"{api}/api/jobs", json={
        "service_required": "simulation", "priority": 60,
        "payload": {"steps": 5, "duration": 1.0}}, timeout=10)
    reply.raise_for_status()
    job_id = reply.json()["job_id"]
    console.print(f"POST {api}/api/jobs -> {reply.status_code} job {job_id[:8]}")
    ws = WebSocketClient.connect(api.replace("http", "ws", 1) + "/ws/client/emp-demo")
    try:
        ws.send(json.dumps({"type": "subscribe_progress", "job_id": job_id}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            message = json.loads(text) if text else {}
            if message.get("type") == "update_job_progress":
                console.print(f"  websocket: progress {message['progress']:.0f}%")
            elif message.get("type") == "complete_job":
                status = message["result"]["status"]
                console.print(f"  websocket: complete_job ({status}) on {message['worker_id']}")
                return status == "success"
    finally:
        ws.close()
    return False


def run_monitor_demo(monitor: str, console: Console | None = None) -> bool:
    """Show what the monitor sees: its queue view and the jobs the demo ran; True if it answers."""
    console = console or Console()
    jobs = requests.get(f"{monitor}/emp/api/jobs", params={"limit": 200}, timeout=10)
    queue = requests.get(f"{monitor}/emp/api/queue", timeout=10)
    if jobs.status_code != 200 or queue.status_code != 200:
        console.print(f"monitor {monitor}: jobs {jobs.status_code}, queue {queue.status_code}")
        return False
    listed = jobs.json()
    summary = queue.json()
    done = sum(1 for job in listed["jobs"] if job["status"] == JobStatus.COMPLETED)
    console.print(f"monitor {monitor}/jobs lists {listed['total']} jobs ({done} completed); "
                  f"{monitor}/queue: {sum(p['pending'] for p in summary['pools'])} pending, "
                  f"{summary['workers']['total']} live workers")
    return listed["total"] > 0
