"""A user's cancel of a running job, seen from a real worker: its log, Celery's state, events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from celery import Celery, chord
from celery.exceptions import ChordError, TaskRevokedError
from flower.events import EventsState

from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks.producer import cancel, get_job, job_events, requeue, services, submit
from webapp.api.events import CONNECTIONS_KEY


class EventLog:
    """Celery's task events as a monitor receives them (a real ``app.events.Receiver``)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(
                connection, handlers={"*": self.events.append})
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.events) if e.get("uuid") == task_id]

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)


@pytest.fixture
def task_events(app: Celery) -> Iterator[EventLog]:
    log = EventLog(app)
    log.thread.start()
    assert log.ready.wait(10)
    yield log
    log.stop()


#: Jobs that run 30 s unless cancelled: one checks every 50 ms, the other runs through
#: the simulation connector, whose watcher polls each second and stops the service.
LONG_JOBS = {"echo": {"sleep": 30}, "simulation": {"steps": 1, "duration": 30}}


@pytest.mark.parametrize("service", sorted(LONG_JOBS))
def test_cancel_of_running_job_ends_quietly_as_revoked(
        app, start_worker, task_events, service) -> None:
    """Tried: an echo job, and a simulation job run by its connector, running on a
    real worker (log level info), cancelled by the user. Before the fix the worker
    logged ``ERROR ... raised unexpected: JobCancelled`` with a traceback, the result
    backend said FAILURE and the worker sent task-failed, so Flower counted the job
    as failed."""
    worker = start_worker("w1", args=["-l", "info"])
    result = submit(service, LONG_JOBS[service], app=app)
    wait_for(lambda: get_job(result.id, app=app)["status"] == "in_progress", timeout=30,
             message="the job to start")
    assert cancel(result.id, app=app) == "cancelled"
    wait_for(lambda: "task-revoked" in task_events.of(result.id)
             or "task-failed" in task_events.of(result.id), timeout=20,
             message="the worker's last event of the task")
    assert result.state == "REVOKED"
    seen = task_events.of(result.id)
    assert "task-revoked" in seen and "task-failed" not in seen
    flower = EventsState()
    for event in list(task_events.events):
        flower.event(dict(event))
    assert flower.tasks[result.id].state == "REVOKED"
    assert sum(c["task-failed"] for c in flower.counter.values()) == 0

    # The job's own record and events are those of a cancel, as before.
    assert get_job(result.id, app=app)["status"] == "cancelled"
    assert "job_cancelled" in [e["event"] for e in job_events(result.id, app=app)]
    # The worker is free again and serves the next job.
    submit("echo", {"x": 1}, app=app).get(timeout=15)

    log = worker.log_path.read_text()
    assert f"job {result.id} was cancelled" in log
    cancelled_line = next(line for line in log.splitlines() if f"job {result.id} was" in line)
    assert "INFO" in cancelled_line
    assert "ERROR" not in log and "Traceback" not in log and "raised unexpected" not in log


def test_run_whose_attempt_was_taken_away_stops_quietly(app, start_worker, task_events) -> None:
    """Tried: a running job requeued (taken from its run); the run learns it at its
    next check. Before the fix that run failed the task (FAILURE, ERROR with a
    traceback) while the job ran again under the same task id; now it stops at
    INFO, is not revoked, and the job's next run completes. Both workers start first
    (the idle one takes the requeued job): a second worker started after the first run
    began could come up only after that run ended on a loaded machine."""
    workers = {name: start_worker(name, args=["-l", "info"]) for name in ("w1", "w2")}
    result = submit("echo", {"sleep": 6}, app=app)
    wait_for(lambda: get_job(result.id, app=app)["status"] == "in_progress", timeout=30,
             message="the job to start")
    first = get_job(result.id, app=app)["worker_id"]
    second = next(name for name in workers if name != first)
    assert requeue(result.id, app=app) == "pending"  # the idle worker takes it: attempt 2
    wait_for(lambda: get_job(result.id, app=app)["status"] == "completed", timeout=30,
             message="the second run to complete")
    seen = task_events.of(result.id)
    assert "task-failed" not in seen and "task-revoked" not in seen
    log = workers[first].log_path.read_text()
    assert "ERROR" not in log and "Traceback" not in log
    assert f"job {result.id} attempt 1 was taken from this run" in log
    assert result.get(timeout=10)["worker"].startswith(f"{second}@")
    assert get_job(result.id, app=app)["attempts"] == 2


def test_cancel_with_terminate_is_revoked_too(app, start_worker, task_events) -> None:
    """Tried: cancel(terminate=True) of a running simulation job (its connector
    would notice in a second; the revoke is faster): Celery kills the run and
    revokes it (its own path); the state and events say REVOKED, as for a
    cooperative cancel, and the worker serves the next job."""
    worker = start_worker("w1", args=["-l", "info"])
    result = submit("simulation", LONG_JOBS["simulation"], app=app)
    wait_for(lambda: get_job(result.id, app=app)["status"] == "in_progress", timeout=30,
             message="the job to start")
    assert cancel(result.id, app=app, terminate=True) == "cancelled"
    wait_for(lambda: "task-revoked" in task_events.of(result.id)
             or "task-failed" in task_events.of(result.id), timeout=20,
             message="the worker's last event of the task")
    assert result.state == "REVOKED" and "task-failed" not in task_events.of(result.id)
    submit("echo", {"x": 1}, app=app).get(timeout=15)
    assert get_job(result.id, app=app)["status"] == "cancelled"
    log = worker.log_path.read_text()
    assert "Traceback" not in log and "raised unexpected" not in log


def test_cancel_of_a_job_no_run_holds_is_revoked(app, client, start_worker) -> None:
    """Tried: a pending job (no worker yet) and a job waiting in Redis for its retry,
    both cancelled. No worker will see their messages again, so before the fix
    Celery kept them PENDING and RETRY for good, and ``get()`` of the pending one
    waited for ever."""
    pending = submit("echo", {"x": 1}, app=app)
    assert cancel(pending.id, app=app) == "cancelled"
    assert pending.state == "REVOKED"
    with pytest.raises(TaskRevokedError):
        pending.get(timeout=5)
    start_worker("w1")
    retrying = submit("echo", {"fail_times": 5}, app=app)
    wait_for(lambda: client.zscore(Keys("default").delayed, retrying.id) is not None,
             timeout=20, message="the job to wait for its retry")
    # The job reaches the delayed set a moment before the worker stores RETRY.
    wait_for(lambda: retrying.state == "RETRY", timeout=10, message="Celery's RETRY state")
    assert cancel(retrying.id, app=app) == "cancelled"
    assert retrying.state == "REVOKED"
    submit("echo", {"x": 2}, app=app).get(timeout=30)
    assert get_job(pending.id, app=app)["attempts"] == 0
    assert get_job(retrying.id, app=app)["status"] == "cancelled"



@pytest.mark.fast
def test_cancelling_a_chords_pending_members_fails_its_body(app) -> None:
    """Tried: a chord of two echo jobs, both cancelled before any worker ran. Celery
    counts a revoked member's part (its body fails with ``ChordError``); before the fix
    the body stayed PENDING for good: ``app.AsyncResult(body_id).get()``, in a process
    that does not hold the chord, waited for ever."""
    echo = services(app)["echo"]
    body = chord([echo.si(n=1), echo.si(n=2)], echo.si(n=3)).apply_async()
    for member in body.parent.results:
        assert cancel(member.id, app=app) == "cancelled"
    body = app.AsyncResult(body.id)
    assert body.state == "FAILURE"
    assert isinstance(body.result, ChordError) and "TaskRevokedError('cancelled')" in str(
        body.result), body.result


def flower_task_state(base: str, task_id: str) -> str | None:
    """The state Flower's Tasks page shows for ``task_id`` (its own datatable JSON)."""
    reply = requests.get(base + "/tasks/datatable", timeout=5, params={
        "draw": 1, "start": 0, "length": 50, "search[value]": "", "order[0][column]": 0,
        "columns[0][data]": "received", "order[0][dir]": "desc"})
    rows = [row for row in reply.json()["data"] if row.get("uuid") == task_id]
    return rows[0]["state"] if rows else None


@pytest.mark.timeout(120)
def test_flower_tasks_page_and_failed_count_show_a_cancelled_job_revoked(
        app, start_worker, start_server) -> None:
    """Tried: the monitor (Flower) running, a running echo job cancelled. Before the
    fix Flower's Tasks page said FAILURE and its workers' Failed count was 1."""
    monitor = start_server("monitor")
    start_worker("w1")
    result = submit("echo", {"sleep": 30}, app=app)
    wait_for(lambda: flower_task_state(monitor.base, result.id) == "STARTED", timeout=40,
             message="Flower to see the job start")
    assert cancel(result.id, app=app) == "cancelled"
    wait_for(lambda: flower_task_state(monitor.base, result.id) in ("REVOKED", "FAILURE"),
             timeout=20, message="Flower to see the job end")
    assert flower_task_state(monitor.base, result.id) == "REVOKED"
    workers = requests.get(monitor.base + "/workers", params={"json": 1}, timeout=5).json()
    (w1,) = [w for w in workers["data"] if w["hostname"].startswith("w1@")]
    assert w1.get("task-failed", 0) == 0 and w1.get("task-revoked") == 1


@pytest.mark.timeout(150)
def test_flower_shows_a_job_cancelled_while_pending_or_retrying_revoked(
        app, client, start_worker, start_server) -> None:
    """Tried: the monitor running, one job cancelled before any worker took it and one
    cancelled while waiting for its retry. No worker holds either, so none sends
    ``task-revoked``; before the fix Flower's Tasks page kept PENDING and RETRY for
    good while the result backend said REVOKED."""
    monitor = start_server("monitor")
    # Celery's ``task-sent`` goes to whoever listens at that moment: submit until the
    # monitor's receiver is bound and sees one.
    def seen_sent() -> Any:
        job = submit("echo", {"x": 1}, app=app)
        time.sleep(0.5)
        if flower_task_state(monitor.base, job.id) == "PENDING":
            return job
        cancel(job.id, app=app)
        return None
    pending = wait_for(seen_sent, timeout=30, message="Flower to see a job sent")
    assert cancel(pending.id, app=app) == "cancelled"
    wait_for(lambda: flower_task_state(monitor.base, pending.id) == "REVOKED", timeout=20,
             message="Flower to show the pending job revoked")

    start_worker("w1")
    retrying = submit("echo", {"fail_times": 5}, app=app)
    wait_for(lambda: flower_task_state(monitor.base, retrying.id) == "RETRY", timeout=40,
             message="Flower to see the retry")
    wait_for(lambda: client.zscore(Keys("default").delayed, retrying.id) is not None,
             timeout=20, message="the job to wait for its retry")
    assert cancel(retrying.id, app=app) == "cancelled"
    wait_for(lambda: flower_task_state(monitor.base, retrying.id) == "REVOKED", timeout=20,
             message="Flower to show the retrying job revoked")
    workers = requests.get(monitor.base + "/workers", params={"json": 1}, timeout=5).json()
    assert [w["hostname"].split("@")[0] for w in workers["data"]] == ["w1"]
    # The monitor's own reader of the event log is not an open socket.
    rows = [row for key in client.zrange(CONNECTIONS_KEY, 0, -1) for row in client.hvals(key)]
    assert rows == []
