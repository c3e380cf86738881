"""The ``emp`` command line as a user runs it: real processes, real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from emp_tasks.local_redis import free_port

EMP = [sys.executable, "-m", "emp_tasks.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> (
        subprocess.CompletedProcess[str]):
    return subprocess.run([*EMP, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_up_with_demo_brings_the_system_up_and_every_demo_job_completes(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EMP_REDIS_URL"}
    env["EMP_LEASE_SECONDS"] = "5"
    ports = ["--api-port", str(free_port()), "--webhook-port", str(free_port())]
    done = subprocess.run([*EMP, "up", "--demo", "--data-dir", str(tmp_path), *ports],
                          capture_output=True, text=True, timeout=180,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: all jobs completed" in done.stdout
    assert "websocket: complete_job (success)" in done.stdout, "the API and its socket ran too"
    assert (tmp_path / "redis" / "appendonlydir").exists(), "append-only persistence is on"


def test_submit_waits_job_shows_and_bad_input_is_refused(redis_server, client,
                                                        start_worker) -> None:
    start_worker("cli-worker")
    env = {"EMP_REDIS_URL": redis_server.url}
    done = run("submit", "simulation", "--payload", '{"steps": 3, "duration": 0.3}', env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    final = json.loads(done.stdout.splitlines()[-1])
    assert final["status"] == "completed" and final["job_id"] == job_id
    shown = json.loads(run("job", job_id, env=env).stdout)
    assert shown["status"] == "completed" and shown["worker_id"] == "cli-worker"

    before = sorted(client.keys("*"))
    bad = run("submit", "simulation", "--requirements", '{"hardware": {"gpu_memory_gb": "x"}}',
              "--no-wait", env=env)
    assert bad.returncode == 2 and "gpu_memory_gb must be a number" in bad.stderr
    bad_json = run("submit", "simulation", "--payload", "{not json", env=env)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    missing = run("job", "no-such-job", env=env)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert sorted(client.keys("*")) == before
