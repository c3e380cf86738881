"""``/api/pools`` and routing over REST: a real ``emp api`` with a pools file, real workers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests
from rest_helpers import Api, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "capability_router"))
from test_routing import IMAGE, POOLS  # noqa: E402


@pytest.fixture
def pools_path(tmp_path: Path) -> Path:
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    return path


@pytest.mark.timeout(120)
def test_api_pools_lists_the_file_with_live_workers_pending_and_wait(
        client, start_server, start_worker, pools_path: Path) -> None:
    api = Api(start_server("api", EMP_POOLS_FILE=str(pools_path)).base)
    start_worker("w-standard", wait=False, WORKER_POOLS="standard").wait_ready("standard")
    # A worker in a pool the file does not name says so at its start (before: nothing did;
    # the router never files a job there).
    other = start_worker("w-other", wait=False, WORKER_POOLS="default",
                         EMP_POOLS_FILE=str(pools_path)).wait_ready("default")
    assert ("w-other: warning: pool(s) default not in the pools file "
            f"{pools_path} (it has fast, standard, heavy)") in other.log_path.read_text()
    # Routed over REST: an image job goes to standard; the decision is on the job.
    job_id = api.submit(service_required="simulation", payload={**IMAGE, "duration": 2})
    record = api.job(job_id)
    assert record["pool"] == "standard" and record["routing"]["pool"] == "standard"
    assert record["routing"]["predicted_seconds"] == 10
    assert "fits standard" in record["routing"]["reason"]
    assert [a["pool"] for a in record["routing"]["alternatives"]] == ["fast", "heavy"]
    assert record["predicted_ms"] == 10_000 and record["work_units"] == 20
    # No pool can run it: 400 naming each pool's reason, nothing written.
    def jobs() -> set[str]:
        return set(client.scan_iter("emp:{*}:job:*"))

    before = jobs()
    refused = api.post("/api/jobs", json={
        "service_required": "simulation", "requirements": {"hardware": {"gpu_memory_gb": 200}}})
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(
        "no pool can run this job: fast: needs 200 GB GPU memory, pool is CPU-only; ")
    assert jobs() == before
    queued = api.submit(service_required="simulation", payload={**IMAGE, "duration": 0.1})
    wait_for(lambda: api.status(job_id) == "in_progress", message="the first job running")

    response = api.get("/api/pools")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["routing"] is True and body["pools_file"] == str(pools_path)
    pools = {p["name"]: p for p in body["pools"]}
    assert list(pools) == ["fast", "standard", "heavy", "default"]
    standard = pools["standard"]
    assert standard["configured"] and standard["gpu_memory_gb"] == [16, 24]
    assert standard["workers"] == ["w-standard"] and standard["live_workers"] == 1
    assert standard["pending"] == 1 and standard["idle_workers"] == 0
    assert standard["unfinished_seconds"] == 20  # two jobs predicted 10 s each
    assert standard["expected_wait_seconds"] == 20
    # Elastic: 20 s of predicted work to clear within the 10 s wait target -> 2 machines
    # (no forecast without `emp intelligence`; workers without MACHINE_ID: one per machine).
    assert standard["live_machines"] == 1 and standard["desired_machines"] == 2
    assert pools["fast"]["desired_machines"] == 0
    assert pools["fast"]["live_workers"] == 0 and pools["fast"]["expected_wait_seconds"] is None
    assert pools["default"] == {**pools["default"], "configured": False, "workers": ["w-other"],
                                "expected_wait_seconds": 0}
    api.wait_status(queued, "completed")
    document = api.get("/api/openapi.json").json()
    assert document["paths"]["/api/pools"]["get"]["operationId"] == "listPools"
    assert "desired_machines" in document["components"]["schemas"]["Pools"]["properties"][
        "pools"]["items"]["required"]


@pytest.mark.timeout(60)
def test_api_pools_without_a_pools_file_lists_live_pools_and_routing_off(
        client, start_server, start_worker) -> None:
    api = Api(start_server("api").base)
    start_worker("w1")
    body = api.get("/api/pools").json()
    assert body["routing"] is False and body["pools_file"] is None
    assert [(p["name"], p["configured"], p["workers"]) for p in body["pools"]] == [
        ("default", False, ["w1"])]
    job_id = api.submit(service_required="simulation", payload={"duration": 0.1})
    record = api.wait_status(job_id, "completed")
    assert record["pool"] == "default" and "routing" not in record


def test_emp_api_with_a_broken_pools_file_refuses_to_start(tmp_path: Path, redis_server) -> None:
    """Tried: EMP_POOLS_FILE naming a file whose fast pool has gpu_memory_gb = "lots".
    `emp api` exits at once with one error naming the file and the field, instead of
    answering 500 to every submit later."""
    import os
    import subprocess

    broken = tmp_path / "pools.toml"
    broken.write_text('[pools.fast]\ngpu = false\ngpu_memory_gb = "lots"\nstorage_gb = 40\n'
                      'durations_seconds = [0, 5]\nservices = ["*"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "emp_tasks.cli", "--redis-url", redis_server.url, "api",
         "--port", "0"], env={**os.environ, "EMP_POOLS_FILE": str(broken)},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "EMP_POOLS_FILE" in done.stderr and str(broken) in done.stderr
    assert "gpu_memory_gb" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.timeout(120)
def test_a_broken_edit_of_the_pools_file_shows_the_pools_routing_still_uses(
        client, start_server, pools_path: Path) -> None:
    """Tried: with the API and the monitor running, the operator saves the pools file with a
    typo (standard's gpu = "yes"), then fixes it with fast widened to 0-20 s. Before,
    `GET /api/pools`, `/api/pools/<name>/metrics` and the monitor's pool list answered 500
    naming the field while routing went on with the last good file: the page an operator
    looks at to see what routing does said nothing about it. Now they show the version
    routing uses, and `/api/pools` says why the file on disk was refused; the fix shows at
    once."""
    api = Api(start_server("api", EMP_POOLS_FILE=str(pools_path)).base)
    monitor = start_server("monitor", EMP_POOLS_FILE=str(pools_path))

    def shown() -> tuple[int, dict]:
        response = api.get("/api/pools")
        return response.status_code, response.json()

    status, body = shown()
    assert status == 200 and body["pools_file_error"] is None
    ranges = {p["name"]: p["durations_seconds"] for p in body["pools"] if p["configured"]}
    assert ranges["fast"] == [0, 5]

    pools_path.write_text(POOLS.replace("gpu = true", 'gpu = "yes"', 1))
    status, body = shown()
    assert status == 200, body
    assert "pools.standard.gpu must be true or false" in body["pools_file_error"]
    assert str(pools_path) in body["pools_file_error"]
    assert [p["name"] for p in body["pools"] if p["configured"]] == ["fast", "standard", "heavy"]
    metrics = api.get("/api/pools/standard/metrics")
    assert metrics.status_code == 200, metrics.text
    listed = requests.get(monitor.base + "/emp/api/pools", timeout=10)
    assert listed.status_code == 200, listed.text
    assert listed.json()["pools"][:3] == ["fast", "standard", "heavy"]
    # Routing also kept the last good file: a submit still goes where it showed.
    job_id = api.submit(service_required="simulation", payload={**IMAGE, "duration": 0.1})
    assert api.job(job_id)["pool"] == "standard"

    pools_path.write_text(POOLS.replace("durations_seconds = [0, 5]",
                                        "durations_seconds = [0, 20]"))
    status, body = shown()
    assert status == 200 and body["pools_file_error"] is None
    ranges = {p["name"]: p["durations_seconds"] for p in body["pools"] if p["configured"]}
    assert ranges["fast"] == [0, 20]


@pytest.mark.timeout(120)
def test_a_submit_naming_a_pool_nobody_serves_is_warned_and_api_pools_says_why_it_waits(
        client, start_server, pools_path: Path) -> None:
    """Tried: an admin POST /api/jobs with "pool": "nosuch2", a pool the pools file does not
    name and no live worker serves. Before, the 201 said nothing (the job waited forever)
    and GET /api/pools listed nosuch2 with desired_machines 1 (the default scaling of a
    pool no operator configured) and nothing saying why its job waits. Now the 201 has
    warnings naming the pool and the file, /api/pools desires no machine for it and its
    waiting_reason says why; a routed job, one naming a pool of the file, or one naming
    a pool a live worker serves gets no warnings."""
    import jsonschema
    from test_routing import live

    from webapp.api.openapi import build

    api = Api(start_server("api", EMP_POOLS_FILE=str(pools_path)).base)
    spec = build(["simulation"])
    schema = {**spec["components"]["schemas"]["Submitted"], "components": spec["components"]}

    def submitted(**body: object) -> dict:
        response = api.post("/api/jobs", json={"service_required": "simulation",
                                                "payload": IMAGE, **body})
        assert response.status_code == 201, response.text
        jsonschema.validate(response.json(), schema)
        return response.json()

    unserved = submitted(pool="nosuch2")
    assert unserved["warnings"] == [
        f"no live worker serves pool nosuch2, and the pools file {pools_path} does not name "
        "it (it has fast, standard, heavy): the job waits until one does"]
    assert "warnings" not in submitted()  # routed
    assert "warnings" not in submitted(pool="standard")  # its scaler asks for machines
    pools = {p["name"]: p for p in api.get("/api/pools").json()["pools"]}
    lost = pools["nosuch2"]
    assert (lost["configured"], lost["pending"], lost["desired_machines"]) == (False, 1, 0)
    assert "does not name it" in lost["waiting_reason"], lost
    assert pools["standard"]["waiting_reason"] == (
        "no live worker serves pool standard: its 2 unfinished job(s) wait until one does; "
        f"desired machines now: {pools['standard']['desired_machines']}")
    live(client, "nosuch2", "w-nosuch2", idle=False)
    assert "warnings" not in submitted(pool="nosuch2")
    assert {p["name"]: p for p in api.get("/api/pools").json()["pools"]}[
        "nosuch2"]["waiting_reason"] is None
