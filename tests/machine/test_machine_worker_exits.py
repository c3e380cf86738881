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

from emp_tasks.local_redis import free_port
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


@pytest.mark.timeout(240)
def test_a_slowly_crash_looping_worker_is_said_and_not_ready_says_why(start_machine) -> None:  # noqa: ANN001
    """Tried: a ComfyUI worker whose ComfyUI is absent (startup wait of 1 s), so each of
    its processes exits 2 with an ``Error:`` line, too late for supervisor to ever mark
    it FATAL. Before, the machine printed nothing while its restarts climbed, and
    ``/ready`` said "worker is STARTING" or "worker has not registered in Redis yet".
    Now each exit is one line of the machine's (name, exit status, the error line) and
    ``/ready`` says the worker keeps exiting."""
    machine = start_machine("box-loop", WORKERS="comfyui:auto", EMP_MOCK_GPUS="1",
                            COMFYUI_BASE_PORT=str(free_port()),
                            EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS="1")
    machine.wait_up()

    def keeps_exiting() -> dict[str, Any] | None:
        reply = machine.get("/ready")
        waiting = reply.json().get("not_ready") or [{}]
        return waiting[0] if "keeps exiting" in waiting[0].get("reason", "") else None

    entry = wait_for(keeps_exiting, timeout=120, message="/ready to say the worker keeps exiting")
    assert entry["name"] == "comfyui-0" and entry["unexpected_exits"] >= 2, entry
    assert entry["reason"].startswith("worker keeps exiting: "), entry
    assert "(last: exit status 2: Error: " in entry["reason"], entry
    said = machine_lines(machine, "machine_program_exited")
    assert said and said[0]["message"].startswith(
        "comfyui-0 exited unexpectedly (exit status 2): Error: "), said
    assert "ComfyUI at http://127.0.0.1:" in said[0]["message"], said


@pytest.mark.timeout(180)
def test_supervisords_log_is_served_behind_the_token(start_machine) -> None:  # noqa: ANN001
    """Tried: ``GET /logs/supervisord`` (the README names ``logs/supervisord.log``, where
    supervisord says which program exited how). Before: 404 "unknown service". Now its
    tail, behind the same token as the programs' logs."""
    machine = start_machine("box-slog", EMP_MOCK_GPUS="1", EMP_HEALTH_TOKEN="t0ken")
    machine.wait_ready()
    assert machine.get("/logs/supervisord").status_code == 401
    reply = machine.get("/logs/supervisord?lines=200",
                        headers={"Authorization": "Bearer t0ken"})
    assert reply.status_code == 200, reply.text
    lines = reply.json()["lines"]
    assert any("supervisord started with pid" in line for line in lines), lines
    assert any("spawned: 'simulation-0'" in line for line in lines), lines
    assert len(machine.get("/logs/supervisord?lines=1", headers={
        "Authorization": "Bearer t0ken"}).json()["lines"]) == 1
