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

#: What was tried: words, a negative, three parts, an overflowing part, a number.
BAD_IDS: list[Any] = ["abc", "-1", "1-2-3", "1-", "18446744073709551616-0", 123]


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


@pytest.mark.parametrize("path", ["/ws/client/c-bad", "/ws/monitor/m-bad"])
def test_connecting_with_a_bad_last_event_id_is_refused_and_leaves_nothing(
        start_server, client, path: str) -> None:
    """Tried: connecting with ``?last_event_id=abc``. The socket answers one error naming
    the field and closes (1008); no subscription is left in the process's connection list
    and nothing is written for the client."""
    api = start_server("api", EMP_API_PROCESSES="1")
    ws = Client.connect(f"{api.ws_base}{path}?last_event_id=abc")
    try:
        answer = receive(ws)
        assert answer["type"] == "error" and answer["field"] == "last_event_id", answer
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws)
        assert closed.value.reason == 1008
    finally:
        if ws.connected:
            ws.close()
    assert open_sockets(api) == []
    assert not client.keys("emp:ws:client:*")
    # A good id on the same path still connects.
    ws = Client.connect(f"{api.ws_base}{path}?last_event_id=0-0")
    try:
        assert receive(ws)["type"] == "connection_established"
        wait_for(lambda: len(open_sockets(api)) == 1, message="the good socket listed")
    finally:
        ws.close()
