"""A bad resume id gets an error naming ``last_event_id``, not a silent dead subscription.

Before, ``subscribe_progress`` with ``"last_event_id": "abc"`` (or
``?last_event_id=abc`` on connect) answered ``subscribed`` and then nothing:
Redis refused the id in the middle of the replay, the session never left its
replay state and held every later event in memory.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from simple_websocket import ConnectionClosed

from conftest import wait_for
from emp_tasks.websocket_client import WebSocketClient as Client

pytestmark = pytest.mark.timeout(120)

#: The largest stream id: nothing can follow it, and Redis refuses to read after it
#: ("invalid start ID for the interval").
LAST_ID = "18446744073709551615-18446744073709551615"
#: What was tried: words, a negative, three parts, an overflowing part, a number, the
#: largest id.
BAD_IDS: list[Any] = ["abc", "-1", "1-2-3", "1-", "18446744073709551616-0", 123, LAST_ID]


def receive(ws: Client, timeout: float = 20.0) -> dict[str, Any]:
    text = ws.receive(timeout=timeout)
    if text is None:
        raise TimeoutError("no message within the timeout")
    return json.loads(text)


def open_sockets(api: Any) -> list[dict[str, Any]]:
    body = requests.get(api.base + "/api/connections", timeout=10).json()
    return body["clients"] + body["monitors"]


def test_subscribe_progress_with_a_bad_id_is_an_error_and_subscribes_nothing(
        start_server, client) -> None:
    """Tried: subscribe_progress to a pending job with each bad id, then with a good one,
    then a cancel over REST. Each bad id answers an error naming the field and no
    ``subscribed``, and the client's subscription list in Redis stays unwritten; the
    same socket then follows the job live, so the session is not stuck in a replay."""
    api = start_server("api", EMP_API_PROCESSES="1")
    job_id = requests.post(api.base + "/api/jobs", json={"service_required": "echo"},
                           timeout=10).json()["job_id"]
    ws = Client.connect(f"{api.ws_base}/ws/client/resumer")
    try:
        assert receive(ws)["type"] == "connection_established"
        for bad in BAD_IDS:
            ws.send(json.dumps({"type": "subscribe_progress", "job_id": job_id,
                                "last_event_id": bad}))
            answer = receive(ws)
            assert answer["type"] == "error", (bad, answer)
            assert answer["field"] == "last_event_id" and answer["job_id"] == job_id
            assert "last_event_id" in answer["error"], answer
        assert not client.keys("emp:ws:client:*"), "a refused subscription was remembered"
        assert [s["subscribed_jobs"] for s in open_sockets(api)] == [0]

        ws.send(json.dumps({"type": "subscribe_progress", "job_id": job_id,
                            "last_event_id": "0"}))
        # The replay is sent by the session's sender thread: either may come first.
        assert {receive(ws)["type"], receive(ws)["type"]} == {"subscribed", "job_submitted"}
        requests.post(f"{api.base}/api/jobs/{job_id}/cancel", timeout=10)
        assert receive(ws)["type"] == "job_cancelled"
    finally:
        ws.close()


def assert_connect_refused(url: str) -> None:
    """A connect whose ``last_event_id`` is refused: one error naming it, then a 1008 close."""
    ws = Client.connect(url)
    try:
        answer = receive(ws)
        assert answer["type"] == "error" and answer["field"] == "last_event_id", answer
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws)
        assert closed.value.reason == 1008
    finally:
        if ws.connected:
            ws.close()


@pytest.mark.parametrize("path", ["/ws/client/c-bad", "/ws/monitor/m-bad"])
def test_connecting_with_a_bad_last_event_id_is_refused_and_leaves_nothing(
        start_server, client, path: str) -> None:
    """Tried: connecting with ``?last_event_id=abc``. The socket answers one error naming
    the field and closes (1008); no subscription is left in the process's connection list
    and nothing is written for the client."""
    api = start_server("api", EMP_API_PROCESSES="1")
    assert_connect_refused(f"{api.ws_base}{path}?last_event_id=abc")
    assert open_sockets(api) == []
    assert not client.keys("emp:ws:client:*")
    # A good id on the same path still connects.
    ws = Client.connect(f"{api.ws_base}{path}?last_event_id=0-0")
    try:
        assert receive(ws)["type"] == "connection_established"
        wait_for(lambda: len(open_sockets(api)) == 1, message="the good socket listed")
    finally:
        ws.close()


def test_the_largest_stream_id_is_refused_everywhere_and_its_neighbours_are_not(
        start_server, client) -> None:
    """Tried: the largest stream id (both parts 2**64-1) as ``?last_event_id=`` on both
    sockets' connect, and as Last-Event-ID and ?last_event_id= on the monitor's SSE stream
    (subscribe_progress is in BAD_IDS above). Before the fix it passed the check and Redis
    refused to read after it: the client socket answered ``subscribed`` or
    ``connection_established``, then an error, then closed; the SSE stream sent an error
    and ended (and EventSource retried forever). Now each is refused as any bad id is (an
    error naming the field and a 1008 close; 400 on SSE), with nothing left subscribed;
    ids next to it (one part at 2**64-1) still connect."""
    api = start_server("api", EMP_API_PROCESSES="1")
    for path in ("/ws/client/c-last", "/ws/monitor/m-last"):
        assert_connect_refused(f"{api.ws_base}{path}?last_event_id={LAST_ID}")
    assert open_sockets(api) == []
    assert not client.keys("emp:ws:client:*")
    for near in ("18446744073709551615", "18446744073709551615-0",
                 "18446744073709551614-18446744073709551615"):
        ws = Client.connect(f"{api.ws_base}/ws/client/c-near?last_event_id={near}")
        try:
            assert receive(ws)["type"] == "connection_established", near
        finally:
            ws.close()
    monitor = start_server("monitor")
    for how in ({"headers": {"Last-Event-ID": LAST_ID}}, {"params": {"last_event_id": LAST_ID}}):
        reply = requests.get(monitor.base + "/emp/events", timeout=10, **how)
        assert reply.status_code == 400, (how, reply.status_code, reply.text[:300])
        field = "Last-Event-ID" if "headers" in how else "last_event_id"
        assert reply.json()["field"] == field and field in reply.json()["error"], reply.text
