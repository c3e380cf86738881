"""Routing with real worker processes in three pools: where jobs land and run, spill-over
and its limit, the decision on the job and in job_submitted, and the model learning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from test_routing import IMAGE, POOLS, SHORT, VIDEO

from capability_router.keys import Keys
from capability_router.pools import load_pools_file
from capability_router.routing import Router
from conftest import ROOT, wait_for
from emp_tasks import producer
from emp_tasks.jobs.simulation import SIZE_FEATURES

POOL_WORKERS = {"fast": "w-fast", "standard": "w-standard", "heavy": "w-heavy"}


@pytest.fixture
def pools_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Routing on in this process (the producer) with the test's three pools."""
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))
    return path


@pytest.fixture
def workers(start_worker, pools_file: Path) -> dict[str, object]:
    """One simulation worker per pool, each serving only its pool (WORKER_POOLS)."""
    started = {pool: start_worker(worker_id, wait=False, WORKER_POOLS=pool)
               for pool, worker_id in POOL_WORKERS.items()}
    for pool, worker in started.items():
        worker.wait_ready(namespace=pool)
    return started


def submit(app, payload: dict, **fields: object) -> str:  # noqa: ANN001 - Celery app
    return producer.submit("simulation", payload, app=app, **fields).id


def finished(app, job_id: str, timeout: float = 60) -> dict:  # noqa: ANN001
    return wait_for(lambda: (r := producer.get_job(job_id, app=app))["status"] == "completed"
                    and r, timeout=timeout, message=f"job {job_id} completed")


def submitted_event(client: redis.Redis, pool: str, job_id: str) -> dict:
    for _, fields in client.xrange(Keys(pool).job_events(job_id)):
        if fields["event"] == "job_submitted":
            return json.loads(fields["data"])
    raise AssertionError(f"no job_submitted for {job_id}")


@pytest.mark.timeout(120)
def test_short_image_and_video_jobs_run_in_fast_standard_and_heavy(
        app, client: redis.Redis, workers, pools_file: Path) -> None:
    quick = {"duration": 0.2}
    jobs = {pool: submit(app, {**payload, **quick})
            for pool, payload in (("fast", SHORT), ("standard", IMAGE), ("heavy", VIDEO))}
    for pool, job_id in jobs.items():
        record = finished(app, job_id)
        assert record["pool"] == pool and record["worker_id"] == POOL_WORKERS[pool]
        routing = record["routing"]
        assert routing["pool"] == pool and f"fits {pool}" in routing["reason"]
        assert record["predicted_ms"] == routing["predicted_seconds"] * 1000
        assert submitted_event(client, pool, job_id)["routing"] == routing
    # The runs taught the model: a short job of the same shape is now predicted from them.
    router = Router(client, load_pools_file(pools_file), cache_seconds=0)
    estimate, _ = router.estimate("simulation", [], SHORT, SIZE_FEATURES)
    assert estimate.source == "learned" and estimate.runs == 1
    assert estimate.seconds < 1.0  # ran in ~0.2 s, against the prior's 2 s
    assert client.hget(Keys("fast").load, "unfinished") == "0"


@pytest.mark.timeout(120)
def test_a_cold_runs_model_load_is_not_learnt_as_run_time(
        app, client: redis.Redis, start_worker, pools_file: Path) -> None:
    """Tried: a short job whose model the worker loads from disk first (1.5 s) and then
    runs 0.2 s. The duration model learnt the whole 1.7 s, so warm runs of the same kind
    were predicted (and routed) as if every one loaded its model; now the load the
    connector reports (load_seconds) is left out."""
    start_worker("w-fast", wait=False, WORKER_POOLS="fast", EMP_SIMULATION_MODELS="m-x",
                 EMP_SIMULATION_DISK_LOAD_SECONDS="1.5").wait_ready(namespace="fast")
    job_id = submit(app, {**SHORT, "duration": 0.2, "models": ["m-x"]})
    record = finished(app, job_id)
    assert record["pool"] == "fast" and record["result"]["load_seconds"] == 1.5
    router = Router(client, load_pools_file(pools_file), cache_seconds=0)
    estimate, _ = router.estimate("simulation", [], SHORT, SIZE_FEATURES)
    assert estimate.source == "learned" and estimate.runs == 1
    assert estimate.seconds < 1.0, estimate  # 0.2 s run; 1.7 s with the load counted


@pytest.mark.timeout(120)
def test_spill_over_to_an_idle_bigger_pool_and_its_limit(app, client: redis.Redis,
                                                         workers) -> None:
    # Three image jobs named into standard: its one worker has 30 s of predicted work.
    long_image = {**IMAGE, "duration": 3}
    queued = [submit(app, long_image, pool="standard") for _ in range(3)]
    assert client.hget(Keys("standard").load, "unfinished_ms") == "30000"
    time.sleep(1.1)  # the router's view of pool state is at most a second old
    # Each routed job below has a shape no run has taught yet (runs here are far shorter
    # than real ones), so its prior, 20 units x 0.5 s = 10 s, fits standard.
    spilled = submit(app, {"steps": 20, "width": 1024, "duration": 0.2})
    record = finished(app, spilled)
    assert record["pool"] == "heavy" and record["worker_id"] == "w-heavy"
    assert record["routing"]["reason"].startswith("spilled over from standard (expected wait")
    # heavy busy as well: nothing idles to spill to, the job waits in standard.
    busy = submit(app, {**VIDEO, "duration": 3}, pool="heavy")
    wait_for(lambda: producer.get_job(busy, app=app)["status"] == "in_progress",
             message="heavy's worker busy")
    time.sleep(1.1)
    waits = submit(app, {"steps": 20, "height": 1024, "duration": 0.2})
    record = producer.get_job(waits, app=app)
    assert record["pool"] == "standard"
    assert record["routing"]["reason"].endswith("no bigger pool that can run it is idle")
    # A short job still goes to fast, never to a pool it does not fit for its load alone.
    assert producer.get_job(submit(app, {**SHORT, "duration": 0.1}), app=app)["pool"] == "fast"
    for job_id in (*queued, waits):
        assert finished(app, job_id)["worker_id"] == "w-standard"


@pytest.mark.timeout(120)
def test_emp_submit_follows_a_routed_job_in_the_pool_it_was_routed_to(
        redis_server, start_worker, pools_file: Path) -> None:  # noqa: ANN001
    """Tried: ``emp submit`` of a short job with routing on and no ``--pool``. It went to
    the router's "fast" pool and completed there, while the command watched the
    "default" pool's stream: its bar stayed at "pending 0%" and it exited 1 "timeout"."""
    start_worker(POOL_WORKERS["fast"], wait=False, WORKER_POOLS="fast").wait_ready("fast")
    done = subprocess.run(
        [sys.executable, "-m", "emp_tasks.cli", "submit", "simulation", "--payload",
         json.dumps({**SHORT, "duration": 0.2}), "--timeout", "30"],
        capture_output=True, text=True, timeout=90,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": redis_server.url,
             "EMP_POOLS_FILE": str(pools_file)})
    assert done.returncode == 0, done.stdout + done.stderr
    final = json.loads(done.stdout.splitlines()[-1])
    assert final["status"] == "completed", final
