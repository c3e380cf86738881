"""The API's event fan-out: an event reaches the sockets that follow its job (and the
monitors), found through an index rather than by asking every open socket."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import redis

from emp_tasks.local_redis import LocalRedis
from webapp.api import session as session_module
from webapp.api.events import Event, EventHub, Subscription
from webapp.api.messages import client_message
from webapp.api.session import ENDED_KEPT, Session


def event(job_id: str | None, namespace: str | None = "default") -> Event:
    return Event("1-1", "update_job_progress", job_id, {"progress": 50}, namespace)


def queued(sub: Subscription) -> list[Event]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


def test_events_reach_followers_and_monitors_only(redis_server: LocalRedis,
                                                  client: redis.Redis) -> None:
    """Tried: 1,000 client sockets each following its own job, one following two jobs, one
    monitor and one worker-events-only monitor; an event for one job."""
    hub = EventHub(redis_server.url)
    hub.stop()  # the reader thread is not needed: events are handed to _dispatch directly
    clients = [Subscription() for _ in range(1000)]
    for i, sub in enumerate(clients):
        hub.subscribe(sub)
        hub.follow(sub, f"job-{i}")
    both = Subscription()
    hub.subscribe(both)
    hub.follow(both, "job-7")
    hub.follow(both, "job-8")
    monitor = Subscription(system=True)
    hub.subscribe(monitor)
    hub.follow_everything(monitor)
    workers_only = Subscription(system=True)
    hub.subscribe(workers_only)

    hub._dispatch(event("job-7"))
    counts = [len(queued(s)) for s in clients]
    assert counts[7] == 1 and sum(counts) == 1
    assert [e.job_id for e in queued(both)] == ["job-7"]
    assert [e.job_id for e in queued(monitor)] == ["job-7"]
    assert queued(workers_only) == []

    hub._dispatch(event(None, namespace=None))  # a worker event: system subscribers only
    assert len(queued(monitor)) == 1 and len(queued(workers_only)) == 1
    assert all(s.queue.empty() for s in clients)


def test_closed_sockets_leave_nothing_in_the_index(redis_server: LocalRedis,
                                                   client: redis.Redis) -> None:
    """Tried: 500 sockets following 3 jobs each, then all closed: no job id stays indexed,
    and a later event for those jobs is offered to no one."""
    hub = EventHub(redis_server.url)
    hub.stop()
    subs = [Subscription() for _ in range(500)]
    for i, sub in enumerate(subs):
        hub.subscribe(sub)
        for j in range(3):
            hub.follow(sub, f"job-{i}-{j}")
    assert len(hub._by_job) == 1500
    for sub in subs:
        hub.unsubscribe(sub)
    assert hub._by_job == {} and hub._wide == set()
    hub._dispatch(event("job-3-1"))
    assert all(s.queue.empty() for s in subs)


def test_connection_counts_follow_opens_and_closes(redis_server: LocalRedis,
                                                  client: redis.Redis) -> None:
    """Tried: 300 client sockets and 2 monitors opened, 100 clients and a monitor closed:
    the counts (what monitors' system_stats show) and the rows of ``/api/connections``
    agree at each step; internal subscriptions are not counted."""
    hub = EventHub(redis_server.url)
    hub.stop()
    clients = [Subscription(info={"kind": "client", "client_id": f"c{i}"}) for i in range(300)]
    monitors = [Subscription(system=True, info={"kind": "monitor"}) for _ in range(2)]
    for sub in [*clients, *monitors, Subscription(everything=True, internal=True)]:
        hub.subscribe(sub)
    assert hub.connection_counts() == {"clients": 300, "monitors": 2}
    rows = hub.connections()
    assert (len(rows["clients"]), len(rows["monitors"])) == (300, 2)
    for sub in [*clients[:100], monitors[0]]:
        hub.unsubscribe(sub)
    assert hub.connection_counts() == {"clients": 200, "monitors": 1}
    rows = hub.connections()
    assert (len(rows["clients"]), len(rows["monitors"])) == (200, 1)
    hub._publish_connections()  # the reader's periodic rewrite agrees
    assert hub.connection_counts() == {"clients": 200, "monitors": 1}
    assert len(hub.connections()["clients"]) == 200


class _Socket:
    """Stands for a client's WebSocket: keeps what the session sends."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def send(self, text: str) -> None:
        self.texts.append(text)


def _sent(ws: _Socket, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while len(ws.texts) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [json.loads(t) for t in ws.texts]


def _client_session(redis_server: LocalRedis) -> tuple[
        EventHub, _Socket, Subscription, Session, Callable[[str, str], None]]:
    """A client session on a hub whose reader is stopped, and ``emit(name, job_id)``,
    which hands the hub the next event of the log directly."""
    hub = EventHub(redis_server.url)
    hub.stop()
    ws = _Socket()
    sub = Subscription(info={"kind": "client"})
    session = Session(ws, hub, sub, client_message).start()
    seq = 0

    def emit(name: str, job_id: str) -> None:
        nonlocal seq
        seq += 1
        hub._dispatch(Event(f"{seq}-0", name, job_id, {}, "default"))

    return hub, ws, sub, session, emit


def test_a_long_lived_client_socket_lets_go_of_ended_jobs(redis_server: LocalRedis,
                                                         client: redis.Redis) -> None:
    """Tried: one client socket following 4,005 jobs one after another (as a client that
    keeps its socket open for weeks and submits over it), each with a submitted, a
    progress and an end event: 2,000 completed, then 1,000 + ENDED_KEPT + 5 failed.
    Before, the socket held every job it ever followed (4,005 entries in its
    subscription, the hub's index and its dedupe positions; the API's RSS grew 3.5 MB
    from 2,000 to 8,000 jobs on one socket, ~0.6 KB a job). Now completed jobs are let
    go and only the last ENDED_KEPT failed ones are still followed (a retry runs them
    again); every event was sent once, and a kept failed job's retry still reaches the
    socket, while a stray event of a completed job does not."""
    hub, ws, sub, session, emit = _client_session(redis_server)
    completed, failed = 2000, 1000 + ENDED_KEPT + 5

    jobs = [f"job-{i}" for i in range(completed + failed)]
    for i, job_id in enumerate(jobs):
        session.follow_job("default", job_id, None)
        emit("job_submitted", job_id)
        emit("update_job_progress", job_id)
        emit("complete_job" if i < completed else "job_failed", job_id)
        if i % 100 == 99:  # as a client would: its jobs end while it submits more
            _sent(ws, 3 * (i + 1))
    messages = _sent(ws, 3 * len(jobs))
    assert len(messages) == 3 * len(jobs)
    assert len({m["event_id"] for m in messages}) == len(messages)  # none sent twice
    assert len(sub.jobs) == ENDED_KEPT, len(sub.jobs)  # was 4,005: every job followed
    assert len(hub._by_job) == ENDED_KEPT, len(hub._by_job)

    emit("update_job_progress", "job-0")  # a stray word after the end of a completed job
    retried = jobs[-1]  # failed last: still followed, and retried under its id
    emit("job_resubmitted", retried)
    after = _sent(ws, len(messages) + 1)[len(messages):]
    assert [(m["type"], m["job_id"]) for m in after] == [("job_resubmitted", retried)]
    session.close()
    session._thread.join(10)
    assert len(session._last) <= ENDED_KEPT + 1, len(session._last)
    assert len(session._ended) == ENDED_KEPT - 1  # the retried one runs again


def test_a_client_socket_lets_go_of_completed_jobs_after_a_short_hold(
        redis_server: LocalRedis, client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: one client socket following 300 jobs that complete and 5 that fail, then,
    past the completed jobs' hold (``COMPLETED_KEPT_SECONDS``, on the session's clock,
    moved on by the test), one more job's event. Before, the socket followed each of its
    last ENDED_KEPT completed jobs (~0.75 KB each: ``bench/production_day``'s API grew
    44 MB in 10 minutes, 8.1%, without levelling off), though nothing runs a completed
    job again. Now only the
    failed ones (a retry runs them again) and the new job are still followed, and a
    completed job's workflow milestone within the hold still arrives."""
    clock = [1000.0]  # the session's monotonic clock: a loaded machine cannot pass the hold
    monkeypatch.setattr(session_module, "time",
                        SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep))
    hub, ws, sub, session, emit = _client_session(redis_server)

    for i in range(300):
        session.follow_job("default", f"done-{i}", None)
        emit("complete_job", f"done-{i}")
    for i in range(5):
        session.follow_job("default", f"failed-{i}", None)
        emit("job_failed", f"failed-{i}")
    emit("workflow_completed", "done-299")  # a later batch, within the hold
    assert _sent(ws, 306)[-1]["type"] == "workflow_completed"
    assert len(sub.jobs) == 305  # held meanwhile
    clock[0] += session_module.COMPLETED_KEPT_SECONDS
    session.follow_job("default", "next", None)
    emit("job_submitted", "next")
    _sent(ws, 307)
    deadline = time.monotonic() + 10
    while len(sub.jobs) > 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sub.jobs == {f"failed-{i}" for i in range(5)} | {"next"}
    assert set(hub._by_job) == sub.jobs
    emit("job_resubmitted", "failed-0")  # a failed job's retry still reaches the socket
    assert _sent(ws, 308)[-1]["job_id"] == "failed-0"
    session.close()


def test_an_idle_client_socket_lets_go_of_its_completed_jobs_too(
        redis_server: LocalRedis, client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a socket following 50 jobs that complete, then no event at all (a browser
    tab left open once its jobs are done), with a 0.3 s hold. Before, a socket let go of
    its completed jobs only when its next event came, so an idle one held them all. Now
    its sender wakes when the first hold ends, and lets go of them."""
    monkeypatch.setattr(session_module, "COMPLETED_KEPT_SECONDS", 0.3)
    hub, ws, sub, session, emit = _client_session(redis_server)
    for i in range(50):
        session.follow_job("default", f"done-{i}", None)
        emit("complete_job", f"done-{i}")
    _sent(ws, 50)
    deadline = time.monotonic() + 10
    while sub.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sub.jobs == set() and hub._by_job == {}
    session.close()


def test_a_completed_steps_workflow_event_read_after_its_end_still_reaches_the_socket(
        redis_server: LocalRedis, client: redis.Redis) -> None:
    """Tried: a socket following a workflow's last step gets its ``complete_job``, then, in
    a later batch read from the log, the ``workflow_completed`` filed with the step's id,
    then ENDED_KEPT other jobs end. A socket that let go of a job at its
    ``complete_job`` dropped the milestone; one that took the milestone for the job
    running again would follow the step for ever. It arrives, and the step is let go
    with the others."""
    hub, ws, sub, session, emit = _client_session(redis_server)

    session.follow_job("default", "step-3", None)
    emit("complete_job", "step-3")
    _sent(ws, 1)  # the session has handled the end before the milestone is read
    emit("workflow_completed", "step-3")
    assert [m["type"] for m in _sent(ws, 2)] == ["complete_job", "workflow_completed"]
    for i in range(ENDED_KEPT):
        session.follow_job("default", f"job-{i}", None)
        emit("complete_job", f"job-{i}")
    _sent(ws, 2 + ENDED_KEPT)
    assert "step-3" not in sub.jobs and len(sub.jobs) == ENDED_KEPT
    session.close()
