"""The API's WebSockets against a real gunicorn server, Redis and workers.

A real WebSocket client (simple-websocket) submits, follows, reconnects and
cancels, as an existing client of the original system would.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from simple_websocket import ConnectionError as WebSocketRefused

from capability_router.keys import Keys
from emp_tasks.websocket_client import WebSocketClient as Client

pytestmark = pytest.mark.timeout(180)

TOKENS = {"EMP_API_TOKENS": "tok-a=cust-a,tok-b=cust-b", "EMP_ADMIN_TOKENS": "tok-admin"}


def connect(server: Any, path: str, token: str | None = None, **query: str) -> Client:
    params = dict(query)
    if token:
        params["token"] = token
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    return Client.connect(f"{server.ws_base}{path}" + (f"?{qs}" if qs else ""))


def receive(ws: Client, timeout: float = 20.0) -> dict[str, Any]:
    text = ws.receive(timeout=timeout)
    if text is None:
        raise TimeoutError("no message within the timeout")
    return json.loads(text)


def collect_until(ws: Client, done: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Messages until ``done(message)`` is true (that one included)."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = receive(ws, max(0.1, deadline - time.monotonic()))
        messages.append(message)
        if done(message):
            return messages
    raise TimeoutError(f"condition not met; got {[m.get('type') for m in messages]}")


def finished(job_id: str):  # noqa: ANN201 - predicate
    return lambda m: m.get("job_id") == job_id and m["type"] in ("complete_job", "job_cancelled")


def test_job_submitted_over_the_socket_streams_progress_and_completion(
    start_server, start_worker, client
) -> None:
    start_worker("ws-1")
    api = start_server("api")
    ws = connect(api, "/ws/client/client-1")
    try:
        hello = receive(ws)
        assert hello["type"] == "connection_established" and hello["client_id"] == "client-1"
        ws.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                            "message_id": "ws-job-1", "priority": 70,
                            "payload": {"steps": 4, "duration": 0.4}}))
        messages = collect_until(ws, finished("ws-job-1"))
    finally:
        ws.close()
    types = [m["type"] for m in messages]
    assert "job_submitted" in types and "job_assigned" in types
    progress = [m["progress"] for m in messages if m["type"] == "update_job_progress"]
    assert progress == [25, 50, 75, 100]
    done = messages[-1]
    assert done["type"] == "complete_job" and done["worker_id"] == "ws-1"
    assert done["result"]["status"] == "success" and done["result"]["data"]["steps"] == 4
    assert [m for m in messages if m["type"] == "job_assigned"][0]["worker_id"] == "ws-1"


def test_job_submitted_over_rest_is_followed_on_the_socket(
    start_server, start_worker, client
) -> None:
    start_worker("ws-2")
    api = start_server("api")
    reply = requests.post(f"{api.base}/api/jobs", json={
        "service_required": "simulation", "payload": {"steps": 3, "duration": 0.6}}, timeout=10)
    assert reply.status_code == 201, reply.text
    job_id = reply.json()["job_id"]
    ws = connect(api, "/ws/client/client-2")
    try:
        receive(ws)
        ws.send(json.dumps({"type": "subscribe_progress", "job_id": job_id}))
        messages = collect_until(ws, finished(job_id))
    finally:
        ws.close()
    # Subscribing late still gets the whole history, once, in order.
    ids = [m["event_id"] for m in messages if "event_id" in m]
    stream = [i for i, _ in client.xrange(Keys().job_events(job_id))]
    assert ids == stream
    assert messages[-1]["result"]["status"] == "success"


def test_reconnect_with_last_event_id_gets_every_missed_event(
    start_server, start_worker, client
) -> None:
    start_worker("ws-3")
    api = start_server("api")
    ws = connect(api, "/ws/client/client-3")
    receive(ws)
    ws.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                        "message_id": "ws-job-3", "payload": {"steps": 20, "duration": 4}}))
    first = collect_until(ws, lambda m: m["type"] == "update_job_progress"
                          and m["progress"] >= 10)
    last_id = [m["event_id"] for m in first if "event_id" in m][-1]
    ws.close()  # gone mid-job; progress goes on meanwhile
    time.sleep(1.5)
    ws = connect(api, "/ws/client/client-3", last_event_id=last_id)
    try:
        receive(ws)
        second = collect_until(ws, finished("ws-job-3"))
    finally:
        ws.close()
    seen = [m["event_id"] for m in first + second if "event_id" in m]
    stream = [i for i, _ in client.xrange(Keys().job_events("ws-job-3"))]
    assert seen == stream, "every event exactly once, in order"
    missed = [m for m in second if m.get("type") == "update_job_progress"]
    assert len(missed) >= 5, "the reconnect replayed what happened while away"


def test_a_reconnect_forgets_the_jobs_whose_completion_the_client_had(
    start_server, start_worker, client
) -> None:
    """Tried: a client socket submits three short jobs and sees them complete, then a long
    one, and reconnects with the last event id it saw (the long job's progress). Before,
    the client's job list in Redis kept all four (each submit renews its expiry, so a
    client that keeps submitting made it grow for good) and every reconnect followed them
    all again. Now the three completed at or before the resume id are dropped from the
    list and not followed; the running one is, and its completion arrives."""
    start_worker("ws-forget")
    api = start_server("api")
    ws = connect(api, "/ws/client/client-forget")
    receive(ws)
    for n in range(3):
        ws.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                            "message_id": f"ws-forget-{n}",
                            "payload": {"steps": 1, "duration": 0.1}}))
        collect_until(ws, finished(f"ws-forget-{n}"))
    ws.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                        "message_id": "ws-forget-run", "payload": {"steps": 20, "duration": 4}}))
    first = collect_until(ws, lambda m: m["type"] == "update_job_progress")
    last_id = [m["event_id"] for m in first if "event_id" in m][-1]
    ws.close()
    key = "emp:ws:client:admin:client-forget"
    assert len(client.smembers(key)) == 4
    ws = connect(api, "/ws/client/client-forget", last_event_id=last_id)
    try:
        receive(ws)
        second = collect_until(ws, finished("ws-forget-run"))
    finally:
        ws.close()
    assert {m.get("job_id") for m in second if "job_id" in m} == {"ws-forget-run"}
    assert client.smembers(key) == {"default|ws-forget-run"}


def test_cancel_over_the_socket_stops_a_running_job(start_server, start_worker, client) -> None:
    """A running job cancelled over the socket ends cancelled and stays so; a second
    cancel_job of the ended job is answered by an error saying so (status 409, as REST's
    cancel), where before the socket sent nothing and the client could not tell."""
    start_worker("ws-4")
    api = start_server("api")
    ws = connect(api, "/ws/client/client-4")
    try:
        receive(ws)
        ws.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                            "message_id": "ws-job-4", "payload": {"steps": 50, "duration": 25}}))
        collect_until(ws, lambda m: m["type"] == "update_job_progress")
        ws.send(json.dumps({"type": "cancel_job", "job_id": "ws-job-4"}))
        messages = collect_until(ws, finished("ws-job-4"))
        # Cancelling it again: before, no answer at all (REST says 409); now an error.
        ws.send(json.dumps({"type": "cancel_job", "job_id": "ws-job-4"}))
        again = receive(ws, 5)
    finally:
        ws.close()
    assert messages[-1]["type"] == "job_cancelled"
    assert again == {"type": "error", "error": "job 'ws-job-4' is already cancelled",
                     "job_id": "ws-job-4", "status": 409, "job_status": "cancelled"}
    assert client.hget(Keys().job("ws-job-4"), "status") == "cancelled"
    time.sleep(1.0)  # the task stops at its next progress report and records nothing more
    assert client.hget(Keys().job("ws-job-4"), "status") == "cancelled"


def test_sockets_enforce_tokens_and_customer_isolation(
    start_server, start_worker, client
) -> None:
    start_worker("ws-5")
    api = start_server("api", **TOKENS)
    # No token, a wrong token: the handshake is refused with 401, no socket opened.
    for token in (None, "nope"):
        with pytest.raises(WebSocketRefused) as refused:
            connect(api, "/ws/client/x", token)
        assert refused.value.status_code == 401
    # A customer token cannot open the monitor feed: 403.
    with pytest.raises(WebSocketRefused) as refused:
        connect(api, "/ws/monitor/m", "tok-a")
    assert refused.value.status_code == 403
    # The token may also come as a header.
    ws = Client.connect(f"{api.ws_base}/ws/monitor/m", headers={
        "Authorization": "Bearer tok-admin"})
    assert receive(ws)["type"] == "connection_established"
    ws.close()

    a = connect(api, "/ws/client/a", "tok-a")
    receive(a)
    a.send(json.dumps({"type": "submit_job", "service_required": "echo",
                       "message_id": "job-of-a", "payload": {"sleep": 3}}))
    assert collect_until(a, lambda m: m["type"] == "job_submitted")[-1]["job_id"] == "job-of-a"
    # The job was filed under customer a, whatever the socket sent.
    assert client.hget(Keys().job("job-of-a"), "customer_id") == "cust-a"

    b = connect(api, "/ws/client/b", "tok-b")
    receive(b)
    b.send(json.dumps({"type": "subscribe_progress", "job_id": "job-of-a"}))
    assert receive(b) == {"type": "error", "error": "job job-of-a not found",
                          "job_id": "job-of-a"}
    b.send(json.dumps({"type": "cancel_job", "job_id": "job-of-a"}))
    assert receive(b)["error"] == "job job-of-a not found"
    # Submitting as another customer is refused.
    b.send(json.dumps({"type": "submit_job", "service_required": "echo",
                       "customer_id": "cust-a", "message_id": "sneaky"}))
    assert receive(b)["status"] == 403
    assert not client.exists(Keys().job("sneaky"))
    b.close()
    done = collect_until(a, finished("job-of-a"))
    a.close()
    assert done[-1]["type"] == "complete_job", "b's cancel did not touch a's job"


def test_monitor_gets_full_state_and_live_events(start_server, start_worker, client) -> None:
    start_worker("ws-6", MACHINE_ID="machine-6")
    api = start_server("api", **TOKENS)
    ws = connect(api, "/ws/monitor/mon-1", "tok-admin")
    try:
        assert receive(ws)["type"] == "connection_established"
        ws.send(json.dumps({"type": "subscribe", "topics": ["jobs", "workers", "machines"]}))
        assert receive(ws)["type"] == "subscribed"
        ws.send(json.dumps({"type": "request_full_state",
                            "finishedJobsPagination": {"page": 1, "pageSize": 10}}))
        snapshot = collect_until(ws, lambda m: m["type"] == "full_state_snapshot")[-1]
        assert [w["worker_id"] for w in snapshot["workers"]] == ["ws-6"]
        assert snapshot["machines"][0]["machine_id"] == "machine-6"
        assert set(snapshot["jobs"]) == {"pending", "active", "completed", "failed"}
        reply = requests.post(f"{api.base}/api/jobs", headers={
            "Authorization": "Bearer tok-a"}, json={"service_required": "echo"}, timeout=10)
        job_id = reply.json()["job_id"]
        messages = collect_until(ws, finished(job_id))
        started = [m for m in messages if m["type"] == "job_started"]
        assert started and started[0]["machine_id"] == "machine-6"
        ws.send(json.dumps({"type": "subscribe", "topics": ["bogus"]}))
        assert receive(ws)["type"] == "error"
    finally:
        ws.close()


def test_a_burst_reaches_every_monitor_in_order_one_message_per_event(start_server,
                                                                      client) -> None:
    """Tried: 3,000 events appended to the pool's log at once while two monitors watch (the
    API writes them in batches, encoded once for both): each monitor gets every event, once,
    in log order, each as its own message."""
    api = start_server("api", **TOKENS)
    monitors = [connect(api, f"/ws/monitor/burst-{i}", "tok-admin") for i in range(2)]
    try:
        for ws in monitors:
            assert receive(ws)["type"] == "connection_established"
        time.sleep(0.5)  # the reader follows the pool from its current end
        events = Keys("default").events
        with client.pipeline(transaction=False) as pipe:
            for i in range(3000):
                pipe.xadd(events, {"event": "update_job_progress", "job_id": f"burst-{i % 7}",
                                   "data": json.dumps({"progress": i})})
            ids = pipe.execute()
        for ws in monitors:
            got = collect_until(ws, lambda m, last=ids[-1]: m.get("event_id") == last)
            progress = [m for m in got if m["type"] == "update_job_progress"]
            assert [m["event_id"] for m in progress] == ids
            assert [m["progress"] for m in progress] == list(range(3000))
    finally:
        for ws in monitors:
            ws.close()


def test_wrongly_typed_fields_get_an_error_naming_the_field_and_the_socket_stays_open(
        start_server, client) -> None:
    """Tried: on /ws/client a ``type`` that is a list, then an object, and a
    ``subscribe_progress`` and ``cancel_job`` whose ``job_id`` is a number, an object, null,
    empty (cancel_job's said "job  not found") or absent; on /ws/monitor a
    ``subscribe`` with ``topics: [{"a": 1}]`` and ``request_full_state`` with ``page``
    10**30, 1e300 and "x", and ``pageSize`` []. Before the fix each raised in the handler
    (TypeError unhashable, or Redis "value is not an integer or out of range"), logged a
    traceback and closed the socket (1002). Now each is an ``error`` naming the field, and
    the same socket answers the next good message; the log has no traceback."""
    api = start_server("api", **TOKENS)
    ws = connect(api, "/ws/client/typed", "tok-a")
    try:
        assert receive(ws)["type"] == "connection_established"
        for kind in (["submit_job"], {"submit_job": 1}):
            ws.send(json.dumps({"type": kind, "service_required": "echo"}))
            answer = receive(ws)
            assert answer["type"] == "error" and answer["field"] == "type", answer
            assert "type" in answer["error"], answer
        assert not client.keys("emp:*job:*")
        # A job_id that is no string: before, "subscribe_progress needs a job_id" (no field,
        # nothing said of the 123 that came); cancel_job the same.
        for kind in ("subscribe_progress", "cancel_job"):
            for job_id, said in ((123, "got 123"), ({"id": "x"}, 'got {"id": "x"}'),
                                 (None, "got null"), ("", 'got ""')):
                ws.send(json.dumps({"type": kind, "job_id": job_id}))
                answer = receive(ws)
                assert answer["type"] == "error" and answer["field"] == "job_id", answer
                assert said in answer["error"], answer
            ws.send(json.dumps({"type": kind}))
            answer = receive(ws)
            assert answer == {"type": "error", "error": f"{kind} needs a job_id",
                              "field": "job_id"}, answer
        ws.send(json.dumps({"type": "submit_job", "service_required": "echo",
                            "message_id": "after-typed"}))
        assert receive(ws)["job_id"] == "after-typed"
    finally:
        ws.close()
    monitor = connect(api, "/ws/monitor/typed", "tok-admin")
    try:
        assert receive(monitor)["type"] == "connection_established"
        tried = [({"type": "subscribe", "topics": [{"a": 1}]}, "topics"),
                 *(({"type": "request_full_state", "finishedJobsPagination": paging},
                    f"finishedJobsPagination.{field}")
                   for paging, field in (({"page": 10**30}, "page"), ({"page": 1e300}, "page"),
                                         ({"page": "x"}, "page"), ({"pageSize": []}, "pageSize")))]
        for message, field in tried:
            monitor.send(json.dumps(message))
            answer = collect_until(monitor, lambda m: m["type"] in (
                "error", "subscribed", "full_state_snapshot"))[-1]
            assert answer["type"] == "error" and answer["field"] == field, (message, answer)
            assert field in answer["error"], answer
        monitor.send(json.dumps({"type": "subscribe", "topics": ["jobs"]}))
        assert collect_until(monitor, lambda m: m["type"] != "heartbeat")[-1] == {
            "type": "subscribed", "topics": ["jobs"]}
    finally:
        monitor.close()
    assert "Traceback" not in api.log()


def test_a_retried_jobs_resubmitted_event_has_no_false_fields(start_server) -> None:
    """Tried: a job with no workflow and no customer (an admin's) and one of workflow
    "wf-9" for cust-a, each cancelled while pending and retried (POST
    /api/jobs/<id>/retry), followed on the client socket. Before the fix the first's
    ``job_resubmitted`` said ``"workflow_id": false, "customer_id": false`` (Redis'
    false for a missing field, sent as a boolean where a client expects a name or
    nothing); now a missing field is left out, as in ``job_submitted``."""
    api = start_server("api", **TOKENS)
    rest = requests.Session()
    for token, body in (("tok-admin", {}), ("tok-a", {"workflow_id": "wf-9"})):
        headers = {"Authorization": f"Bearer {token}"}
        job_id = rest.post(f"{api.base}/api/jobs", headers=headers, timeout=10, json={
            "service_required": "echo", **body}).json()["job_id"]
        assert rest.post(f"{api.base}/api/jobs/{job_id}/cancel", headers=headers,
                         timeout=10).status_code == 200
        assert rest.post(f"{api.base}/api/jobs/{job_id}/retry", headers=headers,
                         timeout=10).status_code == 200
        ws = connect(api, "/ws/client/retry-watcher", token)
        try:
            ws.send(json.dumps({"type": "subscribe_progress", "job_id": job_id}))
            messages = collect_until(ws, lambda m: m["type"] == "job_resubmitted")
        finally:
            ws.close()
        event = messages[-1]
        assert [key for key, value in event.items() if value is False] == [], event
        assert event.get("workflow_id") == body.get("workflow_id"), event
        assert event.get("customer_id") == (None if token == "tok-admin" else "cust-a"), event
        assert event["previous_status"] == "cancelled" and event["job_type"] == "echo"


def test_a_socket_submit_to_a_pool_nobody_serves_is_warned_as_rest_is(
    start_server, client
) -> None:
    """Tried: a ``submit_job`` naming pool ``nosuch-ws``, which no live worker serves
    (routing off). ``POST /api/jobs`` answers such a job 201 with ``warnings``; the
    socket's ``job_submitted`` answer carried none, so a socket client learned nothing of
    a job waiting for ever. Now it carries the same ``warnings`` (and a retry with the
    same message_id gets them again); a job naming no pool gets no ``warnings`` key."""
    api = start_server("api")
    expected = ["no live worker serves pool nosuch-ws: the job waits until one does"]
    rest = requests.post(f"{api.base}/api/jobs", json={
        "service_required": "simulation", "pool": "nosuch-ws"}, timeout=10)
    assert rest.status_code == 201 and rest.json()["warnings"] == expected, rest.text
    ws = connect(api, "/ws/client/client-warned")
    try:
        receive(ws)
        submit = {"type": "submit_job", "service_required": "simulation",
                  "pool": "nosuch-ws", "message_id": "ws-warned-1"}
        ws.send(json.dumps(submit))
        answer = receive(ws)
        assert answer["type"] == "job_submitted" and answer["job_id"] == "ws-warned-1", answer
        assert answer["warnings"] == expected, answer
        ws.send(json.dumps(submit))  # the retry is answered as the first was
        again = receive(ws)
        assert (again["type"], again["job_id"]) == ("job_submitted", "ws-warned-1"), again
        assert again["warnings"] == expected, again
        ws.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                            "message_id": "ws-unwarned-1"}))
        plain = receive(ws)
        assert plain["type"] == "job_submitted" and "warnings" not in plain, plain
    finally:
        ws.close()
