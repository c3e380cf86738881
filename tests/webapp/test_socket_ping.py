"""The API's WebSocket keep-alive: a peer that stops answering pings is dropped.

What was tried: a real ``emp api`` with ``EMP_WS_PING_SECONDS=0.5``; two raw
client sockets (wsproto), one answering the server's pings and one ignoring
them. The silent one must be closed with 1008 "Ping/Pong timeout" within a few
intervals; the answering one must stay open. Bad values of the setting are
refused at start with an error naming it.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request

from capability_router.keys import Keys
from conftest import wait_for
from webapp.settings import WS_PING_SECONDS, WebSettings

pytestmark = pytest.mark.timeout(120)

PING_SECONDS = 0.5


class RawClient:
    """One client socket that reads the server's frames and answers pings only if told."""

    def __init__(self, port: int, client_id: str, answer_pings: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = answer_pings
        self.pings = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1",
                                               target=f"/ws/client/{client_id}?token=tok-a")))
        self.accepted = False
        self.read(10.0, until_accepted=True)
        assert self.accepted, f"{client_id}: handshake not answered"

    def read(self, seconds: float, until_accepted: bool = False) -> None:
        """Handle what arrives for ``seconds`` (or until the server closes, or, when
        ``until_accepted``, until the handshake is answered)."""
        deadline = time.monotonic() + seconds
        while self.close_code is None and time.monotonic() < deadline:
            if until_accepted and self.accepted:
                return
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.accepted = True
                elif isinstance(event, Ping):
                    self.pings += 1
                    if self.answer_pings:
                        self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close_code, self.close_reason = event.code, event.reason or ""
            if not data:
                return


def test_a_peer_that_stops_answering_pings_is_dropped_and_one_that_answers_stays(
        start_server) -> None:
    api = start_server("api", EMP_API_TOKENS="tok-a=cust-a",
                       EMP_WS_PING_SECONDS=str(PING_SECONDS))
    alive = RawClient(api.port, "ping-alive", answer_pings=True)
    answering = threading.Thread(target=alive.read, args=(12 * PING_SECONDS,))
    answering.start()
    silent = RawClient(api.port, "ping-silent", answer_pings=False)
    try:
        started = time.monotonic()
        silent.read(10 * PING_SECONDS)
        dropped_after = time.monotonic() - started
        answering.join()
        assert silent.pings >= 1, "the server never pinged"
        assert silent.close_code == 1008, (silent.close_code, silent.close_reason)
        assert "Ping/Pong" in silent.close_reason
        assert dropped_after < 6 * PING_SECONDS
        assert alive.close_code is None, (alive.close_code, alive.close_reason, alive.pings)
        assert alive.pings >= 8
    finally:
        answering.join()
        alive.sock.close()
        silent.sock.close()


def test_the_ping_interval_defaults_and_bad_values_are_refused(monkeypatch) -> None:
    """Tried: unset, "12.5", then "0", "-1", "abc", "inf" and "nan"."""
    monkeypatch.delenv("EMP_WS_PING_SECONDS", raising=False)
    assert WebSettings.from_env().ws_ping_seconds == WS_PING_SECONDS == 25.0
    monkeypatch.setenv("EMP_WS_PING_SECONDS", "12.5")
    assert WebSettings.from_env().ws_ping_seconds == 12.5
    for bad in ("0", "-1", "abc", "inf", "nan"):
        monkeypatch.setenv("EMP_WS_PING_SECONDS", bad)
        with pytest.raises(ValueError, match=f"EMP_WS_PING_SECONDS must be a positive "
                                             f"number of seconds, got '{bad}'"):
            WebSettings.from_env()


def test_a_monitor_that_stops_reading_is_dropped_while_the_writes_to_it_wait(
        start_server, client) -> None:
    """Tried: a monitor socket (4 KiB receive buffer) that reads its handshake reply and
    nothing more, then 500 events of 20 KB each filed at once: the server's writes to it
    wait on the full buffers before its first ping. Before, they waited for good: the sender never
    got back to notice its backlog overflowing, simple-websocket's ping waited behind it,
    and the socket, its buffers and its backlog stayed. Now a write that has not finished
    within two ping intervals (1 s here) shuts the connection down: the monitor leaves
    ``/api/connections`` within seconds, and the API keeps answering."""
    api = start_server("api", EMP_ADMIN_TOKENS="tok-admin", EMP_WS_PING_SECONDS=str(PING_SECONDS))
    headers = {"Authorization": "Bearer tok-admin"}

    def monitors() -> list[str]:
        reply = requests.get(api.base + "/api/connections", headers=headers, timeout=10)
        return [m.get("monitor_id") for m in reply.json()["monitors"]]

    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", api.port))
    ws = WSConnection(ConnectionType.CLIENT)
    stalled.sendall(ws.send(Request(host="127.0.0.1",
                                    target="/ws/monitor/stalled?token=tok-admin")))
    assert stalled.recv(12) == b"HTTP/1.1 101"
    try:
        wait_for(lambda: monitors() == ["stalled"], timeout=10, message="the monitor socket")
        # 10 MB at once: the buffers are full before the first ping is due.
        data = json.dumps({"progress": 1, "note": "x" * 20_000})
        with client.pipeline(transaction=False) as pipe:
            for _ in range(500):
                pipe.xadd(Keys("default").events, {"event": "update_job_progress",
                                                   "job_id": "filler", "data": data})
            pipe.execute()
        wait_for(lambda: "stalled" not in monitors(), timeout=20, every=0.2,
                 message="the stalled monitor to be dropped")
        assert requests.get(api.base + "/health", timeout=10).status_code == 200
    finally:
        stalled.close()
