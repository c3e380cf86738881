"""Thousands of idle WebSockets must not take the API down.

What was tried: 2,000 client sockets opened against a real ``emp api`` with its
default processes, then left idle as browser tabs are (they answer pings and
send nothing); meanwhile REST calls are made and a new socket subscribes. On
the threaded server each socket held a thread: 128 were accepted, the rest and
every REST call waited. Latency figures are printed, not asserted (the bench
measures them); the test asserts every call is answered.
"""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import threading
import time
from typing import Any

import pytest
import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request

from tests.webapp.test_api_websocket import connect, receive

pytestmark = pytest.mark.timeout(300)

IDLE_SOCKETS = 2000
TOKENS = {"EMP_API_TOKENS": "tok-a=cust-a", "EMP_ADMIN_TOKENS": "tok-admin",
          "EMP_LIMIT_SOCKETS": str(IDLE_SOCKETS + 100)}


class IdleClients:
    """Many WebSocket clients on one thread (wsproto + selectors), as idle browser tabs:
    they answer the server's pings and read what it sends, but never send a message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.accepted = 0
        self.closed = 0
        #: HTTP status of each refused handshake, or close code of each closed socket.
        self.refusals: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def open(self, count: int, timeout: float = 30.0) -> None:
        """Open ``count`` sockets; raises when the server has not accepted them all in time."""
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.setblocking(False)
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host="127.0.0.1",
                                         target=f"/ws/client/idle-{n}?token=tok-a")))
            self.selector.register(sock, selectors.EVENT_READ, ws)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while self.accepted + self.closed < count and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.accepted < count:
            raise TimeoutError(f"{self.accepted} of {count} sockets accepted within "
                               f"{timeout:.0f} s ({self.closed} closed; first refusals "
                               f"{self.refusals[:10]})")

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                sock, ws = key.fileobj, key.data
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        self.accepted += 1
                    elif isinstance(event, Ping):
                        sock.sendall(ws.send(event.response()))
                    elif isinstance(event, (CloseConnection, RejectConnection)):
                        self.refusals.append(getattr(event, "status_code", None)
                                             or getattr(event, "code", None))
                if not data:
                    self.selector.unregister(sock)
                    sock.close()
                    self.closed += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


def rest_round(base: str) -> dict[str, float]:
    """One health check, one submit and one read of the job, timed (s); each must answer."""
    auth = {"Authorization": "Bearer tok-a"}
    times: dict[str, float] = {}
    started = time.perf_counter()
    assert requests.get(f"{base}/health", timeout=10).status_code == 200
    times["health"] = time.perf_counter() - started
    started = time.perf_counter()
    posted = requests.post(f"{base}/api/jobs", headers=auth, timeout=10,
                           json={"service_required": "simulation", "payload": {"steps": 1}})
    assert posted.status_code == 201, posted.text
    times["submit"] = time.perf_counter() - started
    started = time.perf_counter()
    job_id = posted.json()["job_id"]
    assert requests.get(f"{base}/api/jobs/{job_id}", headers=auth, timeout=10).ok
    times["read"] = time.perf_counter() - started
    return times


def summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    return {name: {"p50_ms": round(statistics.median(r[name] for r in rounds) * 1000, 1),
                   "max_ms": round(max(r[name] for r in rounds) * 1000, 1)}
            for name in rounds[0]}


def test_two_thousand_idle_sockets_leave_rest_and_new_sockets_answering(start_server) -> None:
    api = start_server("api", **TOKENS)
    before = [rest_round(api.base) for _ in range(20)]
    idle = IdleClients(api.port)
    try:
        opened = time.perf_counter()
        idle.open(IDLE_SOCKETS, timeout=120)
        opened = time.perf_counter() - opened
        during = [rest_round(api.base) for _ in range(20)]
        fresh = connect(api, "/ws/client/fresh", token="tok-a")
        try:
            assert receive(fresh, timeout=10)["type"] == "connection_established"
        finally:
            fresh.close()
        # Every idle socket is still open: the server did not shed them to answer.
        assert (idle.accepted, idle.closed) == (IDLE_SOCKETS, 0)
    finally:
        idle.close()
    print(json.dumps({"idle_sockets": IDLE_SOCKETS, "open_seconds": round(opened, 1),
                      "rest_before": summary(before), "rest_with_idle_sockets": summary(during)}))
