"""``emp machine`` when one of its worker processes dies: jobs, log lines, readiness.

Real machines (mock GPUs, simulation workers, supervisord, Redis); a worker is
killed with SIGKILL the way the kernel's OOM killer or an operator does it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
from test_machine_runtime import wait_for

from emp_tasks.producer import get_job, job_events, submit


def machine_lines(machine: Any, event: str) -> list[dict[str, Any]]:  # noqa: ANN401
    """The machine's own JSON lines of ``event``."""
    lines = []
    for line in machine.output.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            lines.append(json.loads(line))
    return lines


@pytest.mark.timeout(240)
def test_a_killed_workers_job_is_handed_back_at_once(start_machine, app) -> None:  # noqa: ANN001
    """Tried: ``kill -9`` of the worker running a job (leases of 120 s, so only the
    machine can bring the job back soon). Before, the job stayed ``in_progress`` with
    frozen progress until its lease ran out (26-30 s with the default 30 s leases) while
    ``/status`` showed the respawned worker idle, and the machine printed nothing. Now
    the machine says the worker exited (terminated by SIGKILL) and the job is requeued at
    once, its attempt counted as lease expiry counts it, and claimed again."""
    machine = start_machine("box-k", EMP_MOCK_GPUS="1", EMP_LEASE_SECONDS="120")
    machine.wait_ready()
    job = submit("simulation", {"steps": 40, "duration": 40}, app=app)
    record = wait_for(lambda: (r := get_job(job.id, app=app))["status"] == "in_progress"
                      and r, timeout=60, message="the job to start")
    assert int(record["attempts"]) == 1
    pid = machine.worker("simulation-0")["pid"]
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def requeued() -> list[dict[str, Any]]:
        return [e for e in job_events(job.id, app=app) if e["event"] == "job_requeued"]

    events = wait_for(requeued, timeout=60, message="the job to be requeued")
    requeued_after = time.monotonic() - killed_at
    again = wait_for(lambda: (r := get_job(job.id, app=app))["status"] in (
        "assigned", "in_progress") and int(r["attempts"]) == 2 and r, timeout=60,
        message="the job to be claimed again")
    print(f"job requeued {requeued_after:.1f}s and claimed again "
          f"{time.monotonic() - killed_at:.1f}s after the SIGKILL")
    assert "worker process exited (terminated by SIGKILL)" in json.dumps(events[0]["data"])
    assert again["worker_id"] == "box-k-simulation-0"
    said = wait_for(lambda: machine_lines(machine, "machine_program_exited"), timeout=30,
                    message="the machine's line about the exit")
    assert said[0]["message"].startswith(
        "simulation-0 exited unexpectedly (terminated by SIGKILL)"), said
    assert len(said) == 1, said
