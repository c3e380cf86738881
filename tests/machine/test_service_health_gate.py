"""A worker whose service is down claims nothing; a job its service refused spends no retry.

Real ``emp machine`` and ``emp worker`` processes, real Redis, the ComfyUI
test double stopped and started again on its port (a ComfyUI restart), and
the simulation connector's outage file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from comfyui_server import ComfyUITestServer, txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures
from machine_helpers import wait_until

from capability_router.registry import SYSTEM_EVENTS_KEY, WorkerRegistry
from conftest import ROOT
from emp_tasks.producer import get_job, job_events, submit
from webapp.monitor.machines import machines_view


def registry_record(client: redis.Redis, worker_id: str) -> dict[str, Any]:
    return next((w for w in WorkerRegistry(client).workers() if w["worker_id"] == worker_id), {})


def worker_events(client: redis.Redis, worker_id: str) -> list[dict[str, Any]]:
    return [data for _, fields in client.xrange(SYSTEM_EVENTS_KEY)
            if fields["event"] == "worker_status"
            and (data := json.loads(fields["data"]))["worker_id"] == worker_id]


def event_names(job_id: str, app: Any) -> list[str]:  # noqa: ANN401 - Celery app
    return [e["event"] for e in job_events(job_id, app=app)]


def refused_or_reset(reason: str) -> bool:
    return "refused" in reason.lower() or "connection reset" in reason.lower()


@pytest.mark.timeout(240)
def test_a_restarting_comfyui_stops_its_worker_claiming_until_it_answers_again(
        start_machine, start_comfyui, app, client, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: a machine's ComfyUI worker, its ComfyUI stopped (a restart), a job submitted
    meanwhile, then ComfyUI started again on the same port. While it is down the job stays
    pending and unclaimed, /ready is 503 naming the reason, the registry, the system
    events and the monitor's Machines view say service_unhealthy; once it answers, the job
    runs with its first attempt."""
    server = start_comfyui()
    port = server.port
    machine = start_machine("box-g", EMP_MOCK_GPUS="1", WORKERS="comfyui:1",
                            COMFYUI_BASE_PORT=str(port), EMP_OUTPUT_DIR=str(tmp_path / "out"),
                            EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS="5")
    machine.wait_ready()
    worker_id = "box-g-comfyui-0"

    server.stop()
    stopped_at = time.monotonic()
    ready = wait_until(lambda: (r := machine.get("/ready")).status_code == 503 and r.json(),
                       timeout=30, message="/ready to turn 503")
    print(f"/ready 503 {time.monotonic() - stopped_at:.1f}s after ComfyUI stopped")
    [waiting] = ready["not_ready"]
    assert waiting["name"] == "comfyui-0" and waiting["status"] == "service_unhealthy"
    assert "comfyui service unhealthy" in waiting["reason"]
    # Refused once the port is closed; a check that raced the shutdown reads a reset.
    assert refused_or_reset(waiting["reason"])
    record = registry_record(client, worker_id)
    assert record["status"] == "service_unhealthy"
    assert record["status_reason"] == waiting["reason"]
    status_worker = machine.worker("comfyui-0")
    assert status_worker["status"] == "service_unhealthy" and status_worker["status_reason"]
    assert [e["status"] for e in worker_events(client, worker_id)][-1] == "service_unhealthy"
    [box] = [m for m in machines_view(client) if m["machine_id"] == "box-g"]
    [shown] = box["workers"]
    assert shown["status"] == "service_unhealthy" and refused_or_reset(shown["status_reason"])
    assert box["healthy"] is False and "comfyui-0" in box["health_reason"]
    assert box["worker_counts"]["service_unhealthy"] == 1

    job = submit("comfyui", {"workflow": txt2img(steps=1)}, app=app)
    time.sleep(4)  # four of the worker's health checks, each refused
    waiting_job = get_job(job.id, app=app)
    assert waiting_job["status"] == "pending" and waiting_job["attempts"] == 0
    assert event_names(job.id, app) == ["job_submitted"]

    again = ComfyUITestServer(tmp_path / "comfyui-again").start(port)
    try:
        value = job.get(timeout=60)
        assert value["success"]
        done = get_job(job.id, app=app)
        assert done["status"] == "completed" and done["attempts"] == 1
        assert done["retries"] == 0 and len(again.history) == 1
        assert machine.wait_ready()["not_ready"] == []
        assert registry_record(client, worker_id)["status"] in ("idle", "busy")
        assert [e["status"] for e in worker_events(client, worker_id)][-1] == "service_healthy"
    finally:
        again.stop()


@pytest.mark.timeout(120)
def test_a_comfyui_only_worker_without_emp_connector_waits_for_its_comfyui_too(
        app, start_worker, start_comfyui, client, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: ``emp worker`` serving comfyui alone with no EMP_CONNECTOR (the README's
    command line), its ComfyUI stopped, a job submitted, then ComfyUI started on its port.
    Before: the worker asked no health check, so it took the job and held it waiting for
    ComfyUI (up to EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS, 120), then spent a retry on it.
    Now its default connector gates its claims as EMP_CONNECTOR=comfyui does: the job
    waits unclaimed, the registry says why, and it runs with its first attempt."""
    server = start_comfyui()
    port, url = server.port, server.url
    server.stop()
    start_worker("comfy-alone", wait=False, COMFYUI_URL=url, WORKER_SERVICES="comfyui",
                 EMP_OUTPUT_DIR=str(tmp_path / "out"))  # never "ready": its service is down
    record = wait_until(lambda: (r := registry_record(client, "comfy-alone")).get("status")
                        == "service_unhealthy" and r, timeout=60,
                        message="the worker to say unhealthy")
    assert "comfyui service unhealthy" in record["status_reason"]
    job = submit("comfyui", {"workflow": txt2img(steps=1)}, app=app)
    time.sleep(3)
    assert get_job(job.id, app=app)["attempts"] == 0
    assert event_names(job.id, app) == ["job_submitted"]
    again = ComfyUITestServer(tmp_path / "comfyui-again").start(port)
    try:
        assert job.get(timeout=60)["success"]
        done = get_job(job.id, app=app)
        assert done["attempts"] == 1 and done["retries"] == 0
    finally:
        again.stop()


@pytest.mark.timeout(120)
def test_a_worker_serving_comfyui_beside_others_warns_when_its_comfyui_is_down(
        start_worker, start_comfyui, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: the README's ``emp worker --services comfyui,simulation`` (no EMP_CONNECTOR)
    with its ComfyUI stopped, then with it running. Such a worker's claims are not gated (a
    closed gate would stop its simulation jobs too), so it takes ComfyUI jobs it cannot
    run. Before: not a word. Now its start warns, naming the fix; with ComfyUI answering,
    nothing is said."""
    server = start_comfyui()
    url = server.url
    server.stop()
    down = start_worker("mixed-down", COMFYUI_URL=url, WORKER_SERVICES="comfyui,simulation",
                        EMP_OUTPUT_DIR=str(tmp_path / "out"))
    warned = " ".join(down.log_path.read_text(errors="replace").split())
    assert ("worker mixed-down serves comfyui beside simulation without EMP_CONNECTOR, so "
            "it takes comfyui jobs whether its server answers or not, and it does not "
            "answer now (comfyui service unhealthy:") in warned, warned[-3000:]
    assert "Serve comfyui on a worker of its own (or set EMP_CONNECTOR=comfyui)" in warned
    up = start_comfyui()
    answering = start_worker("mixed-up", COMFYUI_URL=up.url,
                             WORKER_SERVICES="comfyui,simulation",
                             EMP_OUTPUT_DIR=str(tmp_path / "out-up"))
    assert "without EMP_CONNECTOR" not in answering.log_path.read_text(errors="replace")


def test_a_comfyui_only_worker_with_a_bad_connector_setting_stops_in_one_line(
        redis_server) -> None:  # noqa: ANN001
    """Tried: ``emp worker --services comfyui`` with EMP_COMFYUI_TIMEOUT_SECONDS=abc. Its
    claim gate builds the ComfyUI connector at start, which refuses the setting: one line
    naming it and exit 1, as with EMP_CONNECTOR=comfyui, not a traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": redis_server.url,
           "WORKER_ID": "bad-setting", "EMP_COMFYUI_TIMEOUT_SECONDS": "abc"}
    env.pop("EMP_CONNECTOR", None)
    done = subprocess.run([sys.executable, "-m", "emp_tasks.cli", "worker", "--services",
                           "comfyui"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().endswith("Error: [validation] EMP_COMFYUI_TIMEOUT_SECONDS "
                                        "must be a number above 0, got 'abc'"), done.stderr


@pytest.mark.timeout(120)
def test_a_simulated_outage_holds_jobs_pending_until_it_ends(
        app, start_worker, client, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: the simulation connector's outage file created under an idle worker, a job
    submitted, the file removed. The job waits unclaimed, then runs with attempt 1."""
    outage = tmp_path / "outage"
    start_worker("sim-1", EMP_CONNECTOR="simulation", EMP_SIMULATION_OUTAGE_FILE=str(outage))
    outage.write_text("restarting for an upgrade")
    record = wait_until(lambda: (r := registry_record(client, "sim-1")).get("status")
                        == "service_unhealthy" and r, message="the worker to say unhealthy")
    assert record["status_reason"] == ("simulation service unhealthy: connection refused "
                                       "(restarting for an upgrade)")
    job = submit("simulation", {"steps": 2, "duration": 0.2}, max_retries=0, app=app)
    time.sleep(3)
    assert get_job(job.id, app=app)["status"] == "pending"
    outage.unlink()
    assert job.get(timeout=30)["steps"] == 2
    done = get_job(job.id, app=app)
    assert done["attempts"] == 1 and done["retries"] == 0
    assert registry_record(client, "sim-1")["status"] in ("idle", "busy")


@pytest.mark.timeout(120)
def test_a_job_its_service_refused_goes_back_to_pending_without_spending_retries(
        app, start_worker, client, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: a job with max_retries=0 claimed by a worker whose service is down (its
    health check turned off, as when the service dies between the check and the job),
    then the outage ends. The refusal is a job_released event, not a retry; the job
    runs again and completes without having spent its only try."""
    outage = tmp_path / "outage"
    start_worker("sim-2", EMP_CONNECTOR="simulation", EMP_HEALTH_GATE="off",
                 EMP_SIMULATION_OUTAGE_FILE=str(outage), EMP_SERVICE_RELEASE_DELAY_SECONDS="2")
    outage.write_text("restarting")
    job = submit("simulation", {"steps": 2, "duration": 0.2}, max_retries=0, app=app)
    wait_until(lambda: "job_released" in event_names(job.id, app), timeout=30,
               message=f"the job to be released; events {event_names(job.id, app)}")
    outage.unlink()  # within the 2 s release delay
    assert job.get(timeout=30)["steps"] == 2
    done = get_job(job.id, app=app)
    assert done["status"] == "completed" and done["retries"] == 0
    assert done["service_releases"] == 1 and done["attempts"] == 2
    released = [e["data"] for e in job_events(job.id, app=app) if e["event"] == "job_released"]
    assert released[0]["reason"] == ("[network] simulation service: connection refused "
                                     "(restarting)")
    assert released[0]["service_releases"] == 1 and released[0]["max_service_releases"] == 5
    assert "job_retrying" not in event_names(job.id, app)


@pytest.mark.timeout(120)
def test_a_comfyui_job_refused_by_a_restarting_comfyui_is_released_not_retried(
        app, start_worker, start_comfyui, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: a ComfyUI worker with its health check off (the widest window between a
    check and the job) runs one job, then ComfyUI stops and a job with max_retries=0
    comes; ComfyUI starts again on its port. The refused socket released the job with
    no retry spent, and it completed on the restarted ComfyUI."""
    server = start_comfyui()
    port = server.port
    start_worker("comfy-r", EMP_CONNECTOR="comfyui", COMFYUI_URL=server.url,
                 WORKER_SERVICES="comfyui", EMP_OUTPUT_DIR=str(tmp_path / "out"),
                 EMP_HEALTH_GATE="off", EMP_SERVICE_RELEASE_DELAY_SECONDS="0.5")
    first = submit("comfyui", {"workflow": txt2img(steps=1)}, app=app)
    assert first.get(timeout=60)["success"]
    server.stop()
    job = submit("comfyui", {"workflow": txt2img(steps=1, prefix="second")}, max_retries=0,
                 app=app)
    wait_until(lambda: "job_released" in event_names(job.id, app), timeout=30,
               message=f"the job to be released; events {event_names(job.id, app)}")
    again = ComfyUITestServer(tmp_path / "comfyui-again").start(port)
    try:
        assert job.get(timeout=60)["success"]
        done = get_job(job.id, app=app)
        assert done["status"] == "completed" and done["retries"] == 0
        assert done["service_releases"] >= 1
        released = [e["data"] for e in job_events(job.id, app=app)
                    if e["event"] == "job_released"]
        assert "ComfyUI WebSocket" in released[0]["reason"]
        assert "job_retrying" not in event_names(job.id, app)
    finally:
        again.stop()


@pytest.mark.timeout(120)
def test_releases_are_bounded_then_the_refusal_counts(
        app, start_worker, client, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: a service that stays down under a worker that keeps claiming, with
    EMP_MAX_SERVICE_RELEASES=2 and max_retries=0: two releases, then the third refusal
    counts like any network failure and, with no retry left, fails the job."""
    outage = tmp_path / "outage"
    outage.write_text("gone for good")
    start_worker("sim-3", EMP_CONNECTOR="simulation", EMP_HEALTH_GATE="off",
                 EMP_SIMULATION_OUTAGE_FILE=str(outage), EMP_MAX_SERVICE_RELEASES="2",
                 EMP_SERVICE_RELEASE_DELAY_SECONDS="0.2")
    job = submit("simulation", {"steps": 2}, max_retries=0, app=app)
    final = wait_until(lambda: (r := get_job(job.id, app=app))["status"] == "failed" and r,
                       timeout=60, message=f"the job to fail; events {event_names(job.id, app)}")
    names = event_names(job.id, app)
    assert names.count("job_released") == 2 and "job_retrying" not in names
    assert names.index("job_failed") > max(i for i, n in enumerate(names) if n == "job_released")
    assert final["service_releases"] == 2 and final["attempts"] == 3
    assert "connection refused (gone for good)" in final["last_error"]
