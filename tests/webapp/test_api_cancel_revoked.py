"""A job cancelled over the REST API or the client socket is REVOKED in Celery's result
backend, and a chord counts its part, as a cancel through ``emp_tasks.producer`` does."""

from __future__ import annotations

import json

import pytest
import requests
from celery import chord
from celery.exceptions import ChordError, TaskRevokedError
from rest_helpers import Api
from test_api_websocket import collect_until, connect, receive

from conftest import wait_for
from emp_tasks.producer import services, submit


@pytest.mark.timeout(90)
def test_jobs_cancelled_over_rest_and_the_socket_are_revoked_and_end_their_chord(
        app, client, start_server) -> None:
    """Tried: a chord of two echo jobs (no worker: both pending), one part cancelled with
    ``POST /api/jobs/<id>/cancel``, the other with the client socket's ``cancel_job``.
    Before the fix both records said cancelled, but the API's Celery app has no result
    backend (``result_backend=None``: it never waits on results), so the cancel stored
    nothing: each part's ``AsyncResult`` stayed PENDING (``get()`` waited for ever) and
    the chord's body never ended. Now both parts are REVOKED and the body fails with
    ``ChordError``, as for a cancel through ``emp_tasks.producer.cancel``."""
    server = start_server("api")
    echo = services(app)["echo"]
    result = chord([echo.si(n=1), echo.si(n=2)], echo.si(n=3)).apply_async()
    over_rest, over_socket = result.parent.results

    assert Api(server.base).post(f"/api/jobs/{over_rest.id}/cancel").status_code == 200
    assert app.AsyncResult(over_rest.id).state == "REVOKED"
    with pytest.raises(TaskRevokedError):
        app.AsyncResult(over_rest.id).get(timeout=5)
    assert app.AsyncResult(result.id).state == "PENDING"  # one part of two counted

    ws = connect(server, "/ws/client/cancel-revoked")
    try:
        receive(ws)
        ws.send(json.dumps({"type": "cancel_job", "job_id": over_socket.id}))
        collect_until(ws, lambda m: m.get("job_id") == over_socket.id
                      and m["type"] == "job_cancelled")
    finally:
        ws.close()
    # job_cancelled is the cancel's own event: the client may read it before the stores
    # (the part's REVOKED, then its count, which ends the body)
    body = app.AsyncResult(result.id)
    wait_for(lambda: body.state != "PENDING", timeout=10, message="the body to end")
    assert app.AsyncResult(over_socket.id).state == "REVOKED"
    assert body.state == "FAILURE"
    assert isinstance(body.result, ChordError) and "TaskRevokedError('cancelled')" in str(
        body.result), body.result


@pytest.mark.timeout(90)
def test_a_job_cancelled_from_the_monitor_is_revoked_and_ends_its_chord(
        app, client, start_server) -> None:
    """Tried: a chord of two echo jobs (no worker: both pending), both cancelled with the
    monitor's ``POST /emp/api/jobs/<id>/cancel`` (what its Cancel button sends). Before
    the fix the monitor cancelled through the same app as the API, with no result
    backend: both parts stayed PENDING in Celery and the body never ended."""
    monitor = start_server("monitor")
    own = {"Origin": monitor.base, "Sec-Fetch-Site": "same-origin"}
    echo = services(app)["echo"]
    result = chord([echo.si(n=1), echo.si(n=2)], echo.si(n=3)).apply_async()
    for part in result.parent.results:
        reply = requests.post(f"{monitor.base}/emp/api/jobs/{part.id}/cancel", headers=own,
                              timeout=10)
        assert reply.status_code == 200, reply.text
        assert app.AsyncResult(part.id).state == "REVOKED"
    body = app.AsyncResult(result.id)
    assert body.state == "FAILURE" and isinstance(body.result, ChordError), body.result


@pytest.mark.timeout(120)
def test_many_cancels_over_rest_open_no_redis_connection_each(app, client,
                                                              start_server) -> None:
    """Tried: 300 pending jobs cancelled one by one with ``POST /api/jobs/<id>/cancel``,
    each on a new HTTP connection, counting the connections Redis accepted meanwhile.
    Each HTTP connection is served by its own greenlet, and Celery keeps a result
    backend per thread (a greenlet here) unless told it is thread safe: each cancel's
    store built a backend with its own connection pool and connected anew (301 Redis
    connections for 300 cancels), each held until garbage collected (8 -> 38 open after
    1,200 cancels). Now each API process shares one backend: a connection or two per
    process, however many cancels."""
    base = start_server("api").base
    ids = [submit("echo", {"n": n}, app=app).id for n in range(301)]

    def cancelled(job_id: str) -> bool:  # a new HTTP connection each: no Session
        return requests.post(f"{base}/api/jobs/{job_id}/cancel", timeout=10).status_code == 200

    assert cancelled(ids[0])

    def accepted() -> int:
        return int(client.info("stats")["total_connections_received"])

    before = accepted()
    assert all(cancelled(job_id) for job_id in ids[1:])
    assert app.AsyncResult(ids[-1]).state == "REVOKED"
    assert accepted() - before <= 4
