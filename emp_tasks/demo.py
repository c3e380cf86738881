"""``emp demo``: a handful of jobs with different requirements, shown as they finish."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from capability_router.states import JobStatus
from emp_tasks.app import create_app
from emp_tasks.producer import get_job, submit

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
    deadline = time.monotonic() + timeout
    records: dict[str, dict[str, Any]] = {}
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
        table.add_row(job_id[:8], spec["service"], str(spec.get("requirements", {})),
                      str(record.get("priority")), record.get("worker_id", ""),
                      str(record.get("attempts")), record["status"])
    console.print(table)
    app.close()
    return all(r["status"] == JobStatus.COMPLETED for r in records.values())
