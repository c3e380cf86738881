"""A plain ``celery -A emp_tasks.app worker``, as a Celery user starts one, is the worker
``emp worker`` runs: same capability profile, same queue settings, same outcome recording.

Found from outside: it started and answered ping, but claimed with a profile of its own
(services ``simulation`` only, whatever job types the app has), left the pools' settings
(``EMP_MAX_ATTEMPTS``...) unset, and never stored the end of a job the queue gave up on;
then, that it kept Celery's node name ``celery@<host>``, logged Celery's text under
``EMP_LOG_FORMAT=json`` and traced as service ``emp``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import redis
from otlp_spans import job_spans

from capability_router.errors import QueueGaveUp
from conftest import ROOT, wait_for
from emp_tasks.app import create_app
from emp_tasks.producer import get_job, submit

#: A job type whose every run kills its pool process, as a crash or an OOM kill would.
CRASH_JOBS = '''
import os

from celery import shared_task


@shared_task(name="test.crash", service="echo")
def crash():
    os._exit(1)
'''


def registered_services(client: redis.Redis, worker_id: str) -> list[str]:
    return json.loads(client.hget(f"emp:worker:{worker_id}", "profile"))["services"]


def registered_pools(client: redis.Redis, worker_id: str) -> list[str]:
    return json.loads(client.hget(f"emp:worker:{worker_id}", "pools"))


def json_lines(text: str) -> list[dict]:
    """The lines of a worker's output that are JSON objects."""
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


@pytest.mark.timeout(120)
def test_plain_celery_worker_claims_with_the_profile_emp_worker_has(
        app, client: redis.Redis, start_worker) -> None:
    """Tried: ``emp worker`` and ``celery -A emp_tasks.app worker -Q gpu``, no
    ``WORKER_SERVICES``, pending jobs of echo, simulation, simulation needing 24 GB of GPU,
    and comfyui (no connector). Before the fix the celery worker registered services
    ``[simulation]`` where ``emp worker`` has ``[echo, simulation]``: the echo job stayed
    pending for good. Neither may take the 24 GB job (no GPU) or the comfyui one."""
    jobs = {name: submit(service, payload, requirements=needs, app=app, pool="gpu")
            for name, service, payload, needs in [
                ("echo", "echo", {"x": 1}, None),
                ("simulation", "simulation", {"steps": 1, "duration": 0.1}, None),
                ("needs_24gb", "simulation", {"steps": 1, "duration": 0.1},
                 {"hardware": {"gpu_memory_gb": 24}}),
                ("comfyui", "comfyui", {"workflow": {}}, None)]}
    start_worker("by-emp", wait=False, args=["-Q", "gpu"], WORKER_SERVICES="").wait_ready("gpu")
    start_worker("by-celery", wait=False, args=["-Q", "gpu"], WORKER_SERVICES="",
                 plain_celery=True).wait_ready("gpu")
    assert registered_services(client, "by-celery") == registered_services(client, "by-emp")
    assert jobs["echo"].get(timeout=30) is not None
    assert jobs["simulation"].get(timeout=30) is not None
    for name in ("needs_24gb", "comfyui"):
        assert get_job(jobs[name].id, app=app)["status"] == "pending"


@pytest.mark.timeout(120)
def test_plain_celery_worker_applies_queue_settings_and_reports_gave_up_jobs(
        app, client: redis.Redis, start_worker, jobs_env) -> None:
    """Tried: ``celery -A emp_tasks.app worker`` with ``EMP_MAX_ATTEMPTS=2`` and a job whose
    every run kills its process. Before the fix the pool kept the library's 10 attempts
    and, when the queue gave up, nobody stored the failure: ``result.get()`` waited for
    ever (``emp worker`` gives up after 2 and stores ``QueueGaveUp``)."""
    start_worker("by-celery", plain_celery=True, EMP_MAX_ATTEMPTS="2",
                 **jobs_env("crash_jobs", CRASH_JOBS))
    @app.task(name="test.crash", service="echo", shared=False)
    def crash() -> None:
        """The producer's copy; the worker runs its own (``CRASH_JOBS``)."""

    result = crash.apply_async()
    with pytest.raises(QueueGaveUp, match="gave up after 2 attempts"):
        result.get(timeout=40)
    assert get_job(result.id, app=app)["attempts"] == 2


@pytest.mark.parametrize(("given", "runs"), [(None, 1), ("3", "3")])
def test_plain_celery_worker_runs_as_many_jobs_at_once_as_emp_worker(
        redis_server, monkeypatch, given: str | None, runs: object) -> None:
    """Tried: ``celery -A emp_tasks.app worker`` without ``-c``. Before the fix Celery ran
    one job per CPU core at once where ``emp worker`` runs ``WORKER_CONCURRENCY`` (1): on
    a GPU machine, several jobs shared one GPU. ``-c`` still wins over this setting."""
    if given is None:
        monkeypatch.delenv("WORKER_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("WORKER_CONCURRENCY", given)
    assert create_app(redis_server.url).conf.worker_concurrency == runs


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("args", "node_name"), [
    ([], "w-plain@{host}"), (["-n", "mine@%h"], "mine@{host}")])
def test_plain_celery_worker_names_logs_and_traces_itself_as_emp_worker(
        app, client: redis.Redis, start_worker, receiver, args: list[str],
        node_name: str) -> None:
    """Tried: ``celery -A emp_tasks.app worker`` with ``EMP_LOG_FORMAT=json`` (what ``emp
    machine`` sets for its workers) and an OTLP endpoint, running an echo job, without and
    with ``-n``. Before the fix, without ``-n`` its node name was Celery's ``celery@<host>``
    (the job record's ``hostname``, Flower's and the monitor's worker list) where ``emp
    worker``'s is ``<worker id>@<host>``; its log lines were Celery's text, which a log
    shipper cannot parse; its spans said service ``emp``, not ``emp-worker``. A given
    ``-n`` names the node."""
    node = node_name.format(host=socket.gethostname())
    sink = receiver()
    worker = start_worker("w-plain", args=args, plain_celery=True, EMP_LOG_FORMAT="json",
                          OTEL_EXPORTER_OTLP_ENDPOINT=sink.url, OTEL_BSP_SCHEDULE_DELAY="100")
    job = submit("echo", {"x": 1}, app=app)
    assert job.get(timeout=30) is not None
    assert get_job(job.id, app=app)["hostname"] == node
    wait_for(lambda: app.control.ping(destination=[node], timeout=2), timeout=60,
             message=f"a ping reply from {node}")
    wait_for(lambda: job_spans(sink, job.id).get("run"), timeout=60, message="the run span")
    assert {span.service for span in job_spans(sink, job.id)["run"]} == {"emp-worker"}
    started = [line for line in json_lines(worker.log_path.read_text())
               if line.get("logger") == "emp.worker"]
    assert started and started[0]["worker_id"] == "w-plain", worker.log_path.read_text()


@pytest.mark.timeout(150)
def test_plain_celery_worker_serves_q_else_worker_pools(
        app, client: redis.Redis, start_worker) -> None:
    """Tried: ``celery -A emp_tasks.app worker`` with ``WORKER_POOLS=gpu,video``, without
    and with ``-Q default``: without, it serves the pools ``emp worker`` would (gpu,
    video); with, ``-Q`` wins. (Told apart without Celery's private ``_consume_from``.)"""
    start_worker("by-env", wait=False, plain_celery=True,
                 WORKER_POOLS="gpu,video").wait_ready("video")
    start_worker("by-q", wait=False, args=["-Q", "default"], plain_celery=True,
                 WORKER_POOLS="gpu,video").wait_ready("default")
    assert registered_pools(client, "by-env") == ["gpu", "video"]
    assert registered_pools(client, "by-q") == ["default"]
    job = submit("echo", {"x": 1}, app=app, pool="video")
    assert job.get(timeout=30) is not None
    assert get_job(job.id, app=app)["worker_id"] == "by-env"


@pytest.mark.timeout(120)
def test_plain_celery_worker_names_its_pidfile_by_node_and_warns_of_pools_unfiled(
        client: redis.Redis, start_worker, tmp_path: Path) -> None:
    """Tried: ``celery -A emp_tasks.app worker --pidfile <dir>/%n.pid --statedb <dir>/%n.db``
    serving ``WORKER_POOLS=gpu-x`` with ``EMP_POOLS_FILE`` naming fast, standard, heavy.
    Before, the files were ``celery.pid`` and ``celery.db``: ``%n`` stood for Celery's
    default node name though the worker names its node ``<worker id>@<host>`` (stock
    ``celery worker -n w@%h --pidfile %n.pid`` writes ``w.pid``), so two workers of a host
    fought over one pidfile; and it said nothing of gpu-x, which ``emp worker`` (so each
    of ``emp machine``'s workers) warns the router files no job in. Now ``w-pid.pid`` holds
    its pid, the state db is ``w-pid.db``, and the same warning is logged."""
    pools = tmp_path / "pools.toml"
    pools.write_text((ROOT / "conf" / "pools.toml").read_text())
    files = tmp_path / "run"
    files.mkdir()
    worker = start_worker("w-pid", wait=False, plain_celery=True,
                          args=["--pidfile", str(files / "%n.pid"),
                                "--statedb", str(files / "%n.db")],
                          WORKER_POOLS="gpu-x", EMP_POOLS_FILE=str(pools)).wait_ready("gpu-x")
    assert (files / "w-pid.pid").read_text().strip() == str(worker.process.pid), sorted(
        p.name for p in files.iterdir())
    assert not list(files.glob("celery*")), sorted(p.name for p in files.iterdir())
    assert list(files.glob("w-pid.db*")), sorted(p.name for p in files.iterdir())
    assert (f"w-pid: warning: pool(s) gpu-x not in the pools file {pools} (it has fast, "
            "standard, heavy)") in worker.log_path.read_text()
