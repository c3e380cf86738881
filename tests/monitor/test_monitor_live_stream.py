"""The monitor's Server-Sent Events stream (``/emp/events``) against a real monitor process.

Before, a bad ``Last-Event-ID`` answered 200 and a silent stream, and a
client that never read made the monitor queue every event for it, without
bound (88 -> 106 MB in 90 s with three such clients).
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest
import redis
import requests

from capability_router.keys import Keys
from conftest import wait_for

pytestmark = pytest.mark.timeout(180)


def sse_sessions(client: redis.Redis, pid: int | None = None) -> list[dict[str, Any]]:
    """The SSE streams a monitor (every one, or process ``pid``) lists as open in Redis, as
    ``/api/connections`` reads them."""
    pattern = f"emp:ws:connections:*:{pid}" if pid else "emp:ws:connections:*"
    rows = [json.loads(row) for key in client.keys(pattern)
            if client.type(key) == "hash" for row in client.hvals(key)]
    return [row for row in rows if row.get("transport") == "sse"]


def full_log(server: Any) -> str:
    return server.log_path.read_text(errors="replace")


def read_to_the_end(sock: socket.socket) -> bool:
    """Read what the kernel buffered; True once the peer closed (False: still open)."""
    sock.settimeout(30)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("how", [{"headers": {"Last-Event-ID": "garbage"}},
                                 {"params": {"last_event_id": "garbage"}},
                                 {"headers": {"Last-Event-ID": "1-2-3"}},
                                 {"params": {"last_event_id": ["1-0", "2-0"]}}])
def test_a_bad_resume_id_is_answered_400_naming_it(
        start_server, client: redis.Redis, how: dict[str, Any]) -> None:
    """Tried: ``/emp/events`` with a resume id that is no stream id, as the header and as
    the query parameter, and two good ids as the query parameter (before: the last one was
    used, without a word). 400 naming the field; no stream is left subscribed."""
    monitor = start_server("monitor")
    reply = requests.get(monitor.base + "/emp/events", timeout=10, **how)
    assert reply.status_code == 400, reply.text[:300]
    field = "Last-Event-ID" if "headers" in how else "last_event_id"
    assert reply.json()["field"] == field and field in reply.json()["error"]
    assert sse_sessions(client) == []
    # A good id still streams.
    with requests.get(monitor.base + "/emp/events", headers={"Last-Event-ID": "0-0"},
                      stream=True, timeout=10) as good:
        assert good.status_code == 200
        assert next(good.iter_lines(decode_unicode=True)).startswith("retry:")


@pytest.mark.parametrize("values", [["1-0", "2-0"], ["1-0", "1-0"]])
def test_a_repeated_last_event_id_header_is_answered_400_naming_it(
        start_server, client: redis.Redis, values: list[str]) -> None:
    """Tried: ``/emp/events`` with the ``Last-Event-ID`` header twice (a proxy adding its
    own, a client library merging headers). Before, Tornado joined the values with a
    comma and the monitor answered 400 "Last-Event-ID '1-0,2-0' is not an event id":
    true of neither value sent, and it did not say the header came twice. Now the same
    400 a repeated ``?last_event_id=`` gets, naming the header and that it came twice."""
    monitor = start_server("monitor")
    host = monitor.base.split("//", 1)[1]
    connection = http.client.HTTPConnection(host, timeout=10)
    try:
        connection.putrequest("GET", "/emp/events")
        for value in values:
            connection.putheader("Last-Event-ID", value)
        connection.endheaders()
        reply = connection.getresponse()
        body = json.loads(reply.read())
    finally:
        connection.close()
    assert reply.status == 400, body
    assert body["field"] == "Last-Event-ID", body
    assert body["error"] == "Last-Event-ID: given 2 times; send it once (it takes one value)"
    assert sse_sessions(client) == []


def test_a_client_that_never_reads_is_dropped_and_its_backlog_freed(
        start_server, client: redis.Redis) -> None:
    """Tried: a raw socket (4 KiB receive buffer) opens ``/emp/events`` and never reads
    while 3,000 events of 2 KiB go through the log, with ``EMP_SSE_BACKLOG=100``. The
    monitor logs why it dropped the client, closes its stream (the socket reaches EOF)
    and no longer lists the stream, so its queue is gone."""
    monitor = start_server("monitor", EMP_SSE_BACKLOG="100")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", monitor.port))
    try:
        slow.sendall(f"GET /emp/events HTTP/1.1\r\nHost: 127.0.0.1:{monitor.port}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        pid = monitor.process.pid
        wait_for(lambda: len(sse_sessions(client, pid)) == 1, message="the stream subscribed")
        padding = "x" * 2048
        stream = Keys().events
        for batch in range(30):
            with client.pipeline(transaction=False) as pipe:
                for n in range(100):
                    job_id = f"flood-{batch}-{n}"
                    pipe.xadd(stream, {"event": "update_job_progress", "job_id": job_id,
                                       "data": json.dumps({"job_id": job_id, "progress": 1,
                                                           "message": padding})})
                pipe.execute()
        wait_for(lambda: "dropping an SSE client" in full_log(monitor), timeout=60,
                 message="the monitor to drop the client that never reads")
        assert "fell 100 messages behind" in full_log(monitor)
        wait_for(lambda: sse_sessions(client, pid) == [], timeout=30,
                 message="the dropped stream unlisted")
        assert read_to_the_end(slow), "the monitor left the stream open"
    finally:
        slow.close()
    assert requests.get(monitor.base + "/health", timeout=10).status_code == 200
