"""The machine's Prometheus ``/metrics`` for real: ``emp machine``, supervisord, Celery
workers running simulation jobs, Redis, scraped over HTTP.

Before, the health server had no ``/metrics`` (404): an operator scraping the fleet
saw nothing per machine (programs up, restarts, jobs run or failed, model cache,
disk), and ``/status`` counted neither restarts nor jobs.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_machine_runtime import wait_for

from emp_tasks.producer import get_job, submit

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def scrape(machine, headers: dict[str, str] | None = None) -> dict[tuple, float]:  # noqa: ANN001
    """The machine's series: (name, sorted labels) -> value."""
    reply = machine.get("/metrics", headers=AUTH if headers is None else headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    series = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def value(series: dict[tuple, float], name: str, **labels: str) -> float | None:
    return series.get((name, tuple(sorted(labels.items()))))


@pytest.mark.timeout(240)
def test_a_scrape_shows_programs_restarts_jobs_and_the_cache(start_machine, app,  # noqa: ANN001
                                                             tmp_path: Path) -> None:
    """Scrapes while a one-GPU machine runs a job, fails one and has its worker killed."""
    machine = start_machine("box-m", EMP_MOCK_GPUS="1", EMP_HEALTH_TOKEN=TOKEN,
                            EMP_MODEL_CACHE_DIR=str(tmp_path / "models"),
                            EMP_MODEL_CACHE_GB="2")
    machine.wait_ready()
    assert machine.get("/metrics").status_code == 401
    assert machine.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401

    series = scrape(machine)
    assert value(series, "emp_machine_program_up", program="simulation-0", role="worker") == 1
    assert value(series, "emp_machine_program_restarts_total", program="simulation-0") == 0
    assert value(series, "emp_machine_worker_registered", program="simulation-0") == 1
    assert value(series, "emp_machine_service_healthy", program="simulation-0") == 1
    assert value(series, "emp_machine_model_cache_budget_bytes") == 2e9
    assert value(series, "emp_machine_model_cache_bytes") == 0
    assert value(series, "emp_machine_model_downloads_total", outcome="completed") == 0
    assert value(series, "emp_machine_run_dir_free_bytes") > 0
    assert value(series, "emp_machine_uptime_seconds") > 0

    # One job completes, one fails for good (a validation error is not retried).
    done = submit("simulation", {"steps": 2, "duration": 0.2}, app=app)
    failed = submit("simulation", {"steps": 2, "duration": 0.2, "failure_rate": 1,
                                   "failure_type": "validation"}, app=app)
    for job, status in ((done, "completed"), (failed, "failed")):
        wait_for(lambda job=job: get_job(job.id, app=app)["status"] in ("completed", "failed"),
                 message=f"job {job.id} to end")
        assert get_job(job.id, app=app)["status"] == status
    jobs = {"program": "simulation-0"}
    series = wait_for(lambda: (s := scrape(machine)) and value(
        s, "emp_machine_jobs_total", outcome="failed", **jobs) == 1 and s,
        message="the failed job to be counted")
    assert value(series, "emp_machine_jobs_total", outcome="completed", **jobs) == 1

    # SIGKILL the worker: supervisor starts it again, the restart is counted, the job
    # counts of the dead process are kept (a counter does not go back).
    pid = machine.worker("simulation-0")["pid"]
    os.kill(pid, signal.SIGKILL)
    series = wait_for(lambda: (s := scrape(machine)) and value(
        s, "emp_machine_program_restarts_total", program="simulation-0") == 1 and s,
        message="the restart to be counted")
    machine.wait_ready()
    series = scrape(machine)
    assert value(series, "emp_machine_program_up", program="simulation-0", role="worker") == 1
    assert value(series, "emp_machine_jobs_total", outcome="completed", **jobs) == 1

    # /status reads the same figures.
    worker = machine.worker("simulation-0")
    assert worker["restarts"] == 1
    assert worker["job_counts"] == {"completed": 1, "failed": 1, "cancelled": 0}


@pytest.mark.timeout(120)
def test_metrics_public_opens_only_metrics_and_a_service_outage_shows(start_machine,  # noqa: ANN001
                                                                     tmp_path: Path) -> None:
    """EMP_METRICS_PUBLIC=1 lets a scraper in without the token (/logs still wants it);
    while the worker's service is down (the simulation's outage file, as a ComfyUI that
    does not answer) its series reads 0, and 1 again after."""
    outage = tmp_path / "outage"
    machine = start_machine("box-p", EMP_MOCK_GPUS="1", EMP_HEALTH_TOKEN=TOKEN,
                            EMP_METRICS_PUBLIC="1", EMP_SIMULATION_OUTAGE_FILE=str(outage))
    machine.wait_ready()
    series = scrape(machine, headers={})
    assert value(series, "emp_machine_program_up", program="simulation-0", role="worker") == 1
    assert value(series, "emp_machine_service_healthy", program="simulation-0") == 1
    assert machine.get("/logs/simulation-0").status_code == 401

    outage.write_text("restarting")
    wait_for(lambda: value(scrape(machine, headers={}), "emp_machine_service_healthy",
                           program="simulation-0") == 0, message="the outage to show")
    outage.unlink()
    wait_for(lambda: value(scrape(machine, headers={}), "emp_machine_service_healthy",
                           program="simulation-0") == 1, message="the service back")


def test_only_workers_get_the_counters_directory(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """``emp machine`` started from a shell that had a PROMETHEUS_MULTIPROC_DIR of its own
    (an API server's, say): before, supervisord's environment passed it to every program,
    so a service using prometheus_client would write its metrics into another server's
    directory. Now it is not passed on; each worker gets the machine's counters folder
    in its own environment."""
    from machine.counters import ENV, counters_dir
    from machine.gpus import GpuInventory
    from machine.runtime import MachineRuntime
    from machine.settings import MachineSettings

    monkeypatch.setenv(ENV, str(tmp_path / "someone-elses"))
    settings = MachineSettings("box", "simulation:2", redis_url="redis://127.0.0.1:1/0",
                               run_dir=tmp_path / "run")
    runtime = MachineRuntime(settings, GpuInventory("mock", []))
    assert ENV not in runtime.child_env()
    workers = [spec for spec in runtime.plan.programs if spec.role == "worker"]
    assert len(workers) == 2
    assert {spec.env.get(ENV) for spec in workers} == {str(counters_dir(tmp_path / "run"))}


def test_counting_outside_a_machine_loads_and_writes_nothing(tmp_path: Path) -> None:
    """A worker run alone (no PROMETHEUS_MULTIPROC_DIR) counts a job and a download: no
    file appears and prometheus_client is not even imported (the count costs nothing)."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "os.environ.pop('PROMETHEUS_MULTIPROC_DIR', None)\n"
            "from machine.counters import count_download, count_job\n"
            "count_job('simulation-0', 'completed')\n"
            "count_download(True, 10, 0.5)\n"
            "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n")
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []
