"""``emp machine`` for real: supervisord, Celery workers, Redis, the health server over HTTP.

Each machine runs in mock-GPU mode with simulation workers; tests kill its
processes the way machines die (SIGKILL of a worker, of the whole machine)
and check that supervisor, the reaper and the queue bring every job to an end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from test_logs_shipping import Receiver

from capability_router.registry import SYSTEM_EVENTS_KEY, WorkerRegistry
from conftest import FAST
from emp_tasks.local_redis import LocalRedis, free_port
from emp_tasks.producer import get_job, job_events, submit
from machine.logs import LINE_FIELDS
from machine.status import MACHINES_KEY, read_machine

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.05,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")


def summary(receiver: Receiver) -> list[tuple[Any, ...]]:
    return [(x.get("pid"), x.get("timestamp", "")[11:23], x.get("event"), x.get("job_id"))
            for x in receiver.lines]


def machine_events(client: redis.Redis, machine_id: str) -> list[dict[str, Any]]:
    events = []
    for _, fields in client.xrange(SYSTEM_EVENTS_KEY):
        data = json.loads(fields["data"])
        if fields["event"] == "machine_status" and data.get("machine_id") == machine_id:
            events.append(data)
    return events


@pytest.mark.timeout(240)
def test_machine_runs_reports_restarts_and_ships_logs(start_machine, app, client) -> None:  # noqa: ANN001
    receiver = Receiver().start()
    try:
        machine = start_machine("box-a", EMP_MOCK_GPU_MEMORY_GB="40",
                                EMP_MOCK_GPU_MODEL="Mock A40", FLUENT_BIT_URL=receiver.url)
        started = time.monotonic()
        ready = machine.wait_ready()
        print(f"machine ready in {time.monotonic() - started:.1f}s")
        assert ready["ready"] is True and ready["not_ready"] == []
        assert machine.get("/health").json()["machine_id"] == "box-a"

        # /status: workers with supervisor state, pid and the registry's profile.
        status = machine.get("/status").json()
        assert status["gpus"]["source"] == "mock" and len(status["gpus"]["gpus"]) == 2
        workers = {w["worker_id"]: w for w in status["workers"]}
        assert sorted(workers) == ["box-a-simulation-0", "box-a-simulation-1"]
        for n, worker in enumerate(status["workers"]):
            assert worker["state"] == "RUNNING" and worker["registered"] and worker["pid"] > 0
            assert worker["gpu"] == n and worker["jobs"] == []
            assert worker["profile"]["hardware"] == {"gpu_memory_gb": 40,
                                                     "gpu_model": "Mock A40"}
            assert worker["profile"]["machine_id"] == "box-a"
            assert worker["profile"]["services"] == ["simulation"]
        assert status["services"] == [] and status["uptime_seconds"] > 0

        # Redis: the machine record, the live set and a machine_status event.
        record = wait_for(lambda: read_machine(client, "box-a"), message="the machine record")
        assert record["status"] == "online" and len(record["workers"]) == 2
        assert client.zscore(MACHINES_KEY, "box-a") is not None
        assert any(e["status"] == "online" for e in machine_events(client, "box-a"))

        # Logs and unknown services.
        assert len(machine.get("/logs/simulation-0?lines=3").json()["lines"]) == 3
        assert machine.get("/logs/box-a-simulation-1").status_code == 200
        missing = machine.get("/logs/nope")
        assert missing.status_code == 404 and missing.json()["services"] == [
            "simulation-0", "simulation-1"]
        assert machine.post("/restart/nope").status_code == 404

        # SIGKILL the worker running a long job: supervisor restarts it, the job still ends.
        job = submit("simulation", {"steps": 16, "duration": 6}, app=app)
        record = wait_for(lambda: (r := get_job(job.id, app=app))["status"] == "in_progress"
                          and r, message="the job to start")
        victim = machine.worker(record["worker_id"])
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        respawned = wait_for(lambda: (w := machine.worker(victim["name"])).get("pid") not in (
            None, victim["pid"]) and w, every=0.02, message="supervisor to respawn the worker")
        respawn_seconds = time.monotonic() - killed_at
        restarted = wait_for(lambda: (w := machine.worker(victim["name"])).get("state") == "RUNNING"
                             and w, every=0.02, message="the new worker to be RUNNING")
        restart_seconds = time.monotonic() - killed_at
        machine.wait_ready()
        ready_seconds = time.monotonic() - killed_at
        final = wait_for(lambda: (r := get_job(job.id, app=app))["status"] in (
            "completed", "failed") and r, timeout=90, message="the job to end")
        job_seconds = time.monotonic() - killed_at
        assert final["status"] == "completed" and final["attempts"] >= 2
        print(f"SIGKILL -> respawned {respawn_seconds:.2f}s, -> RUNNING (startsecs) "
              f"{restart_seconds:.2f}s, -> ready (registered) {ready_seconds:.1f}s, "
              f"-> job completed {job_seconds:.1f}s")
        assert restarted["pid"] == respawned["pid"] != victim["pid"]

        # Every JSON line of the workers carries the context; the job's events have its id.
        # The record ends before the worker's last line reaches its file (through
        # supervisor's pipe): on a loaded machine that line came a moment later.
        def job_logged() -> tuple[list[dict], list[dict]] | None:
            try:
                lines = machine.log_lines("simulation-0") + machine.log_lines("simulation-1")
            except ValueError:  # a line read while it was being written
                return None
            job_lines = [line for line in lines if line["job_id"] == job.id]
            events = {line["event"] for line in job_lines}
            return (lines, job_lines) if {"job_received", "job_completed"} <= events else None
        lines, job_lines = wait_for(job_logged, timeout=20,
                                    message="the job's received and completed log lines")
        assert lines and all(set(LINE_FIELDS) <= set(line) for line in lines)
        done = next(line for line in job_lines if line["event"] == "job_completed")
        program = done["connector_id"]
        assert done == {**done, "machine_id": "box-a", "worker_id": f"box-a-{program}",
                        "service_type": "simulation", "deployment_env": "ci",
                        "region": "local-1", "cloud_provider": "test-cloud",
                        "instance_id": "i-test"}

        # The same lines reached the receiver, from the workers and their pool processes.
        shipped = wait_for(lambda: [x for x in receiver.lines if x.get("job_id") == job.id
                                    and x.get("event") == "job_completed"], timeout=30,
                           message=f"the shipped job_completed line; got {summary(receiver)}; "
                                   f"{machine.get('/status').json()['log_shipping']}")
        assert shipped[0]["worker_id"] == done["worker_id"]
        shipping = machine.get("/status").json()["log_shipping"]
        assert shipping["shipped"] > 0 and shipping["dropped"] == 0

        # A restart through the health server.
        before = machine.worker("simulation-1")["pid"]
        reply = machine.post("/restart/simulation-1")
        assert reply.status_code == 200 and reply.json()["state"] == "RUNNING"
        assert reply.json()["pid"] != before

        # A clean stop: programs stopped, the machine recorded offline, nothing left.
        stopping = time.monotonic()
        assert machine.stop() == 0, machine.tail()
        print(f"clean stop {time.monotonic() - stopping:.1f}s")
        offline = read_machine(client, "box-a")
        assert offline["status"] == "offline"
        # Its programs as they ended (the last report read them RUNNING, with their pids).
        assert {(w["state"], w["pid"]) for w in offline["workers"]} == {("STOPPED", None)}
        assert client.zscore(MACHINES_KEY, "box-a") is None
        assert machine.leftovers() == []
        assert [w["worker_id"] for w in WorkerRegistry(client).workers()] == []
    finally:
        receiver.stop()


@pytest.mark.timeout(240)
def test_a_vanished_machine_is_reaped_and_its_job_completes_elsewhere(start_machine, app,
                                                                      client) -> None:  # noqa: ANN001
    # Long leases: only the reaper (stale after 3 s) can bring the job back quickly.
    slow_leases = {"EMP_MOCK_GPUS": "1", "EMP_LEASE_SECONDS": "120",
                   "EMP_MACHINE_STALE_SECONDS": "3"}
    machines = {m.machine_id: m for m in (start_machine("box-b", **slow_leases),
                                          start_machine("box-c", **slow_leases))}
    for machine in machines.values():
        machine.wait_ready()
    job = submit("simulation", {"steps": 10, "duration": 4}, app=app)
    record = wait_for(lambda: (r := get_job(job.id, app=app))["status"] == "in_progress" and r,
                      message="the job to start")
    victim = machines[record["machine_id"]]
    survivor = next(m for m in machines.values() if m is not victim)
    assert victim.leftovers()

    killed_at = time.monotonic()
    victim.kill()  # emp machine only; supervisord and its programs must die with it
    wait_for(lambda: victim.leftovers() == [], timeout=15,
             message="the victim's supervisord and workers to die with it")
    gone_seconds = time.monotonic() - killed_at
    requeued = wait_for(lambda: (r := get_job(job.id, app=app)).get("machine_id") ==
                        survivor.machine_id and r, timeout=60,
                        message="the job to move to the surviving machine")
    requeue_seconds = time.monotonic() - killed_at
    final = wait_for(lambda: (r := get_job(job.id, app=app))["status"] == "completed" and r,
                     timeout=60, message="the job to complete on the survivor")
    print(f"victim's processes gone {gone_seconds:.2f}s after SIGKILL; job requeued and "
          f"claimed by the survivor after {requeue_seconds:.1f}s; completed after "
          f"{time.monotonic() - killed_at:.1f}s")
    assert requeued["machine_id"] == survivor.machine_id
    assert final["worker_id"].startswith(survivor.machine_id)

    assert read_machine(client, victim.machine_id)["status"] == "gone"
    assert client.zscore(MACHINES_KEY, victim.machine_id) is None
    assert any(e["status"] == "gone" and job.id in e.get("requeued_jobs", [])
               for e in machine_events(client, victim.machine_id))
    requeues = [e for e in job_events(job.id, app=app) if e["event"] == "job_requeued"]
    assert requeues and "machine gone" in json.dumps(requeues[0]["data"])
    assert all(w["machine_id"] != victim.machine_id for w in WorkerRegistry(client).workers())
    assert read_machine(client, survivor.machine_id)["status"] == "online"


@pytest.mark.timeout(180)
def test_a_machine_whose_supervisord_is_killed_is_recorded_gone_and_its_job_requeued(
        start_machine, app, client) -> None:  # noqa: ANN001
    """Tried: ``kill -9`` of supervisord alone while a job runs (long leases, so only
    the machine's own record of its end can bring the job back soon). The machine exited
    and recorded itself ``offline`` ("stopped cleanly: its workers returned their jobs"),
    showing its dead worker RUNNING, while the job stayed in progress until its lease
    ran out. Now it is recorded gone and the job is pending again at once."""
    machine = start_machine("box-s", EMP_MOCK_GPUS="1", EMP_LEASE_SECONDS="120")
    machine.wait_ready()
    job = submit("simulation", {"steps": 30, "duration": 30}, app=app)
    wait_for(lambda: get_job(job.id, app=app)["status"] == "in_progress", timeout=60,
             message="the job to start")
    os.kill(int((machine.run_dir / "supervisord.pid").read_text()), signal.SIGKILL)
    assert machine.process.wait(timeout=60) != 0
    record = read_machine(client, "box-s")
    assert record["status"] == "gone" and "supervisord" in record["reason"], record
    assert client.zscore(MACHINES_KEY, "box-s") is None
    assert get_job(job.id, app=app)["status"] == "pending"
    assert any(e["status"] == "gone" and job.id in e.get("requeued_jobs", [])
               for e in machine_events(client, "box-s"))


@pytest.mark.timeout(180)
def test_a_second_machine_under_a_running_machines_id_is_refused(
        start_machine, client, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: a second ``emp machine`` with the MACHINE_ID of a running one (another run
    directory and port). Both ran, overwrote one record and shared worker ids; when one
    stopped it deleted the other's worker records and the survivor's /ready stayed 503.
    Now the second exits with one line naming the running one, changing nothing."""
    first = start_machine("box-t", EMP_MOCK_GPUS="1")
    first.wait_ready()
    before = read_machine(client, "box-t")
    twin = start_machine("box-t", EMP_MOCK_GPUS="1", EMP_MACHINE_RUN_DIR=str(tmp_path / "twin"))
    assert twin.process.wait(timeout=60) == 1
    said = twin.tail()
    assert "is already running" in said and "Traceback" not in said, said
    assert "machine_stopping" not in said and "machine_stopped" not in said, said
    assert first.get("/ready").status_code == 200
    after = read_machine(client, "box-t")
    assert (after["health_url"], after["pid"]) == (before["health_url"], before["pid"])


@pytest.mark.system
@pytest.mark.timeout(180)
def test_emp_up_machine_starts_a_mock_gpu_machine(redis_server: LocalRedis, client: redis.Redis,
                                                  tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "EMP_REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT), **FAST}
    output = tmp_path / "up.out"
    with open(output, "ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "emp_tasks.cli", "up", "--no-web", "--workers", "0",
             "--machine", "--health-port", str(port), "--data-dir", str(tmp_path / "emp")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = str(tmp_path / "emp" / "machine").encode()
    try:
        wait_for(lambda: b"EMP is up" in output.read_bytes() or up.poll() is not None,
                 timeout=120, message="emp up")
        assert up.poll() is None, output.read_text()
        assert f"machine http://127.0.0.1:{port}" in output.read_text()
        status = requests.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
        assert status["machine_id"] == "local-machine"
        assert [w["profile"]["hardware"]["gpu_memory_gb"] for w in status["workers"]] == [24, 24]
        os.killpg(up.pid, signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        assert read_machine(client, "local-machine")["status"] == "offline"
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=10)
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and run_dir in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue


@pytest.mark.timeout(180)
def test_comfyui_instances_are_supervised_and_their_models_reach_the_profile(
        start_machine, client, tmp_path: Path) -> None:  # noqa: ANN001
    """COMFYUI_COMMAND runs ComfyUI N on port base+N; its worker reports the real models."""
    server = Path(__file__).with_name("comfyui_server.py")
    base_port = free_port()
    machine = start_machine(
        "box-d", EMP_MOCK_GPUS="1", WORKERS="comfyui:auto", COMFYUI_BASE_PORT=str(base_port),
        COMFYUI_DIR=str(tmp_path),
        COMFYUI_COMMAND=f"{sys.executable} {server} --port {{port}} --root comfy-gpu{{gpu}} "
                        "--checkpoints sd15.safetensors,sdxl/base.safetensors")
    machine.wait_ready()
    status = machine.get("/status").json()
    service, = status["services"]
    assert service["name"] == "comfyui-server-0" and service["state"] == "RUNNING"
    assert service["port"] == base_port and service["gpu"] == 0
    worker, = status["workers"]
    assert worker["port"] == base_port and worker["registered"]
    assert "sd15.safetensors" in worker["profile"]["models"]["comfyui"]
    assert worker["profile"]["services"] == ["comfyui"]
    assert (tmp_path / "comfy-gpu0").is_dir()  # {gpu} substituted, COMFYUI_DIR the cwd
    assert requests.get(f"http://127.0.0.1:{base_port}/system_stats", timeout=5).ok
    assert machine.stop() == 0, machine.tail()
    assert machine.leftovers() == []


@pytest.mark.timeout(180)
def test_a_machine_booted_before_redis_recovers_once_redis_is_up(start_machine,
                                                                 tmp_path: Path) -> None:  # noqa: ANN001
    """Workers exit while Redis is down until supervisor gives up (FATAL); the machine
    starts them again, so the machine is ready soon after Redis comes up."""
    port = free_port()
    machine = start_machine("box-e", url=f"redis://127.0.0.1:{port}/0", EMP_MOCK_GPUS="1",
                            EMP_START_RETRIES="1", EMP_REVIVE_SECONDS="1")
    machine.wait_up()
    fatal = wait_for(lambda: (w := machine.worker("simulation-0")).get("state") == "FATAL" and w,
                     timeout=60, every=0.2, message="supervisor to give up on the worker")
    assert "registry_error" in fatal and machine.get("/ready").status_code == 503
    late = LocalRedis(tmp_path / "late-redis", port=port).start()
    try:
        came_up = time.monotonic()
        machine.wait_ready(timeout=90)
        print(f"ready {time.monotonic() - came_up:.1f}s after Redis came up")
        client = redis.Redis(port=port, decode_responses=True)
        assert wait_for(lambda: (read_machine(client, "box-e") or {}).get("status") == "online",
                        timeout=15, message="the machine to report again")
        client.close()
        assert machine.stop() == 0, machine.tail()
    finally:
        machine.cleanup()
        late.stop(kill=True)


def test_uptime_stays_true_when_the_wall_clock_is_set_back(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """Tried: the machine's wall clock set back an hour (NTP catching up on a rented
    machine): /health and /status answered an uptime of about -3600 s."""
    import machine.runtime as runtime_module
    from machine.gpus import GpuInventory
    from machine.runtime import MachineRuntime
    from machine.settings import MachineSettings

    runtime = MachineRuntime(MachineSettings("box", "simulation:1", run_dir=tmp_path),
                             GpuInventory("mock", []))

    class SetBack:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def time() -> float:
            return time.time() - 3600

    monkeypatch.setattr(runtime_module, "time", SetBack)
    assert 0 <= runtime.liveness()["uptime_seconds"] < 60
    assert 0 <= runtime.report({})["uptime_seconds"] < 60


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """Tried: ``emp machine`` with its run directory on a full disk (a 200 KB tmpfs
    filled up): a 20-line OSError traceback (No space left on device) from deep in the
    config writer. Now one line naming EMP_MACHINE_RUN_DIR, and nothing started."""
    from machine.errors import MachineError
    from machine.gpus import GpuInventory
    from machine.runtime import MachineRuntime
    from machine.settings import MachineSettings

    (tmp_path / "a-file").write_text("not a directory")
    settings = MachineSettings("box", "simulation:1", redis_url="redis://127.0.0.1:1/0",
                               run_dir=tmp_path / "a-file" / "run")
    runtime = MachineRuntime(settings, GpuInventory("mock", []))
    with pytest.raises(MachineError, match="cannot write the run directory .*EMP_MACHINE_RUN_DIR"):
        runtime.start()
    assert runtime.health is None and runtime.supervisord.process is None


def test_a_health_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    """Tried: a second ``emp machine`` (another MACHINE_ID) on the host with the same
    EMP_HEALTH_PORT: werkzeug printed "Port N is in use by another program... start the
    server with a different port" and called sys.exit(1), past the machine's own error,
    which names the setting. Now a MachineError naming EMP_HEALTH_PORT; nothing started."""
    import socket as sockets

    from machine.errors import MachineError
    from machine.gpus import GpuInventory
    from machine.runtime import MachineRuntime
    from machine.settings import MachineSettings

    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = MachineSettings("box", "simulation:1", redis_url="redis://127.0.0.1:1/0",
                                   run_dir=tmp_path / "run", health_host="127.0.0.1",
                                   health_port=taken.getsockname()[1])
        runtime = MachineRuntime(settings, GpuInventory("mock", []))
        with pytest.raises(MachineError, match="cannot listen on .*EMP_HEALTH_PORT"):
            runtime.start()
    assert runtime.health is None and runtime.supervisord.process is None


@pytest.mark.timeout(120)
def test_emp_machine_on_a_taken_health_port_says_one_line(start_machine) -> None:  # noqa: ANN001
    """Tried: ``emp machine`` with EMP_HEALTH_PORT held by another program. Before, it
    printed werkzeug's "Port N is in use by another program. Either identify and stop that
    program, or start the server with a different port.", then "machine box-port
    stopping" and "machine box-port stopped" log lines for a machine that never started,
    then its own error line. Now the error line alone (after the plan it would have run),
    with the system's reason."""
    import socket as sockets

    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        machine = start_machine("box-port", EMP_MOCK_GPUS="1", EMP_HEALTH_PORT=str(port))
        assert machine.process.wait(timeout=60) == 1
    said = machine.tail()
    assert "in use by another program" not in said and "Traceback" not in said, said
    assert "machine_stopping" not in said and "machine_stopped" not in said, said
    assert said.strip().splitlines()[-1] == (
        f"Error: health server cannot listen on 127.0.0.1:{port}: [Errno 98] Address "
        "already in use; set EMP_HEALTH_PORT (--health-port) or EMP_HEALTH_HOST"), said


@pytest.mark.timeout(150)
def test_a_fatal_worker_is_revived_with_the_reason_it_gave(start_machine) -> None:  # noqa: ANN001
    """Tried: ``emp machine`` whose Redis does not answer (port 1): each worker exits at
    start, supervisor gives up (FATAL) and the machine starts it again. Before, the
    machine's line said "simulation-0 is FATAL (Exited too quickly (process log may have
    details)); starting it again": the reason was only in ``logs/simulation-0.log``.
    Now the line carries the worker's error line (Redis ... does not answer)."""
    machine = start_machine("box-fatal", url="redis://127.0.0.1:1/0", EMP_MOCK_GPUS="1",
                            EMP_START_RETRIES="0", EMP_REVIVE_SECONDS="1")

    def revive_line() -> str | None:
        lines = [line for line in machine.tail().splitlines() if '"machine_revive"' in line]
        return lines[-1] if lines else None

    line = json.loads(wait_for(revive_line, timeout=90, message="a revive line"))
    assert line["message"].startswith("simulation-0 is FATAL (Error: worker "
                                      "box-fatal-simulation-0: Redis at "), line
    assert "does not answer" in line["message"], line


@pytest.mark.timeout(120)
def test_a_machine_whose_logs_cannot_be_written_runs_its_jobs(
        start_machine, app, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: the run directory on a 4 MB tmpfs, filled with dd once the machine was ready,
    then jobs. Before, supervisord's next log write failed (No space left on device), its
    report of that to its stderr (supervisord.out, same disk) failed too, and the exception
    ended supervisord 3.5 s after the fill: every worker with it, the machine exited 1.
    Here every log of the machine is /dev/full (writes fail with ENOSPC, as on a full disk):
    before, supervisord died at its first line and the machine was never ready (90 s; it
    was reading all of supervisord.out, endless here, for its error). Now supervisord
    writes its log through the machine, which drops what it cannot write, says so once
    and counts it; the worker runs its jobs."""
    logs = tmp_path / "run-box-f" / "logs"
    logs.mkdir(parents=True)
    for name in ("supervisord.log", "supervisord.out", "simulation-0.log"):
        (logs / name).symlink_to("/dev/full")
    machine = start_machine("box-f", EMP_MOCK_GPUS="1")
    machine.wait_ready()
    jobs = [submit("simulation", {"steps": 2, "duration": 0.2}, app=app) for _ in range(3)]
    for job in jobs:
        wait_for(lambda job=job: get_job(job.id, app=app)["status"] == "completed",
                 timeout=30, message=f"job {job.id} to complete")
    supervisor = machine.get("/status").json()["supervisor"]
    assert supervisor["state"] == "RUNNING" and supervisor["log_dropped_bytes"] > 0
    assert machine.process.poll() is None
    assert machine.tail().count("cannot write supervisord's log") == 1, machine.tail()
    assert machine.stop() == 0, machine.tail()


#: Writes ~2 MB of lines to stdout, says so on stderr, waits for a line on stdin,
#: then writes 100 more.
PRODUCER = r"""
import sys
out = sys.stdout.buffer
for n in range(20000):
    out.write(b"before %05d %s\n" % (n, b"x" * 90))
out.flush()
sys.stderr.write("written\n")
sys.stderr.flush()
sys.stdin.readline()
for n in range(100):
    out.write(b"after %03d\n" % n)
out.flush()
"""


@pytest.mark.timeout(90)
def test_supervisords_output_is_drained_while_its_log_write_blocks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Tried: supervisord's log file on a disk that stops answering (write() blocks, it
    does not fail), here a FIFO opened for reading that nobody reads, so the copy's
    writes block once its 64 KiB are full; a producer process writes 2 MB of lines to
    the pipe the copy reads, like supervisord. Before, the one thread that read the pipe
    was stuck in write(), the pipe filled and the producer blocked on its own output for
    ever (for supervisord: no more restarts of crashed workers); the 10 s wait below
    timed out. Now the pipe is read into a bounded queue whatever the disk does: the
    producer finishes, what does not fit is dropped and counted (one warning), and once
    the file takes writes again later lines reach it (one line saying so)."""
    import logging
    import select
    import threading

    from machine.supervision import OutputCopy

    fifo = tmp_path / "supervisord.log"
    os.mkfifo(fifo)
    stuck = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that does not read
    received = bytearray()

    def drain() -> None:
        os.set_blocking(stuck, True)
        while data := os.read(stuck, 65536):
            received.extend(data)

    draining = threading.Thread(target=drain, daemon=True)
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert producer.stdout is not None and producer.stdin is not None
    copy = OutputCopy(fifo, max_bytes=0)
    try:
        with caplog.at_level(logging.INFO, logger="emp.machine"):
            copy.start(producer.stdout)
            ready, _, _ = select.select([producer.stderr], [], [], 10)
            assert ready, "the producer blocked writing to the pipe (not drained)"
            assert producer.stderr.readline() == b"written\n"
            assert copy.dropped_bytes > 0
            draining.start()
            wait_for(lambda: copy.queued_bytes == 0, timeout=10,
                     message="the copy to write what it kept")
            producer.stdin.write(b"go\n")
            producer.stdin.close()
            assert producer.wait(timeout=10) == 0
            copy.join(timeout=10)
            draining.join(timeout=10)
    finally:
        if not draining.is_alive() and not draining.ident:
            draining.start()  # unblock the copy of the old code
        producer.kill()
        producer.wait()
        producer.stdin.close()
        producer.stderr.close()
        copy.join(timeout=5)
        draining.join(timeout=5)
        os.close(stuck)
    lines = bytes(received).splitlines(keepends=True)
    before = [line for line in lines if line.startswith(b"before ")]
    assert before[0] == b"before 00000 " + b"x" * 90 + b"\n"
    assert lines[-100:] == [b"after %03d\n" % n for n in range(100)]
    assert len(before) + 100 == len(lines), "a line was cut"
    produced = 20000 * len(before[0]) + 100 * len(b"after 000\n")
    assert len(received) + copy.dropped_bytes == produced
    messages = [r.getMessage() for r in caplog.records if r.name == "emp.machine"]
    assert sum("takes no writes" in m for m in messages) == 1, messages
    assert sum("log" in m and "again; " in m for m in messages) == 1, messages


@pytest.mark.timeout(60)
def test_an_older_releases_supervisord_out_is_deleted_at_start(
        start_machine, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: a run directory used by an older release, whose logs/supervisord.out
    (supervisord's stdout then, appended at every start, never rotated) had grown to
    3 MB, started with this release. Before, the file stayed for ever: nothing writes
    or deletes it any more. Now the machine deletes it at start and says so in one
    line; the other logs stay."""
    logs = tmp_path / "run-box-o" / "logs"
    logs.mkdir(parents=True)
    (logs / "supervisord.out").write_bytes(b"an older release's line\n" * 131072)
    (logs / "supervisord.log").write_bytes(b"kept\n")
    machine = start_machine("box-o", url=f"redis://127.0.0.1:{free_port()}/0",
                            EMP_MOCK_GPUS="1")
    machine.wait_up()
    assert not (logs / "supervisord.out").exists()
    assert (logs / "supervisord.log").read_bytes().startswith(b"kept\n")
    assert machine.tail().count("supervisord.out") == 1, machine.tail()
    assert machine.stop() == 0, machine.tail()


def test_a_supervisord_that_exits_at_start_is_told_from_a_bounded_tail(tmp_path: Path) -> None:
    """Tried: a supervisord that exits at start (a broken supervisord.conf) in a run
    directory whose supervisord.out had grown to 64 MB (appended at every start, never
    rotated). Before, the machine read all 64 MB into memory to quote its last 2,000
    bytes. Now the error quotes supervisord's last output kept in memory (8 KB at most);
    no log file is read."""
    import tracemalloc

    from machine.errors import MachineError
    from machine.supervision import Supervisord
    from machine.supervisor_conf import RunFiles

    files = RunFiles.in_dir(tmp_path)
    files.log_dir.mkdir()
    for name in ("supervisord.out", "supervisord.log"):
        with open(files.log_dir / name, "wb") as grown:
            grown.truncate(64 * 1024 * 1024)  # sparse: 64 MB to read, nothing on disk
    files.config.write_text("[supervisord]\nnodaemon = true\nminfds = not-a-number\n")
    tracemalloc.start()
    try:
        with pytest.raises(MachineError,
                           match="supervisord exited with 2: .*not-a-number") as error:
            Supervisord(files, dict(os.environ)).start()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(str(error.value)) < 2200
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated to report the error"


@pytest.mark.timeout(60)
def test_supervisords_output_is_rotated(start_machine) -> None:  # noqa: ANN001
    """Tried: a machine with EMP_LOG_MAX_BYTES=300 whose worker exits (Redis away).
    Before, supervisord.out (supervisord's stdout, every line of its log again) grew
    past 300 bytes, and on at every start: it was never rotated. Now supervisord's only
    output is logs/supervisord.log, rotated at EMP_LOG_MAX_BYTES like every log."""
    machine = start_machine("box-g", url=f"redis://127.0.0.1:{free_port()}/0",
                            EMP_MOCK_GPUS="1", EMP_LOG_MAX_BYTES="300", EMP_LOG_BACKUPS="1")
    machine.wait_up()
    logs = machine.run_dir / "logs"
    wait_for(lambda: any(b"exited: simulation-0" in path.read_bytes()
                         for path in logs.glob("supervisord.*")),
             timeout=30, message="supervisord to log the worker's exit")
    sizes = {path.name: path.stat().st_size for path in logs.glob("supervisord.*")}
    assert "supervisord.log.1" in sizes and max(sizes.values()) <= 300, sizes
    assert machine.stop() == 0, machine.tail()
