"""A closed client WebSocket is freed at once, not left to the cycle collector.

What was tried: the API app served by werkzeug's threaded server in this
process; another process opens 60 client sockets one after another, each
receiving ``connection_established``, asking for an unknown job's progress
(an error answers) and closing. With the cycle collector off, one collection
afterwards finds what those sockets left in reference cycles, less what the
same time with no socket leaves. flask-sock's view (a response class made per
request, closing over the socket) and a session holding a bound method of its
connection left 123 objects a socket; an API process that had served a few
thousand sockets then paused 240-520 ms in one full collection.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from emp_tasks.local_redis import LocalRedis
from tests.conftest import ROOT, wait_for
from webapp.api import create_app
from webapp.settings import WebSettings

pytestmark = pytest.mark.timeout(180)

SOCKETS = 60
#: Objects a socket may leave in cycles: werkzeug's URL matcher makes a few per request,
#: REST too (8 here), which is no socket's doing.
BOUND_PER_SOCKET = 20

#: The clients: emp_tasks' WebSocketClient, which reads frames that come with the
#: handshake reply (simple-websocket's own Client leaves them unread: a stall under load).
CLIENTS = textwrap.dedent("""
    import json, sys
    from emp_tasks.websocket_client import WebSocketClient
    port, count = int(sys.argv[1]), int(sys.argv[2])
    for n in range(count):
        ws = WebSocketClient.connect(f"ws://127.0.0.1:{port}/ws/client/gc-{n}?token=tok-gc")
        first = json.loads(ws.receive(timeout=30))
        assert first["type"] == "connection_established", first
        ws.send(json.dumps({"type": "subscribe_progress", "job_id": f"absent-{n}"}))
        answer = json.loads(ws.receive(timeout=30))
        assert answer["type"] == "error", answer
        ws.close()
    print("done")
""")


@pytest.fixture
def api_port(redis_server: LocalRedis) -> Iterator[int]:
    app = create_app(WebSettings(redis_url=redis_server.url,
                                 customer_tokens={"tok-gc": "cust-gc"}), reap_machines=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        app.extensions["emp_events"].stop()


def _open_sockets(port: int, count: int) -> None:
    done = subprocess.run([sys.executable, "-c", CLIENTS, str(port), str(count)], cwd=ROOT,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-3000:]


#: Names of a socket's threads: werkzeug's request thread, simple-websocket's reader, the
#: session's sender.
SOCKET_THREADS = ("process_request_thread", "simple_websocket", "emp-ws-sender")


def _quiet() -> None:
    """Wait until every socket's request, reader and sender thread has ended."""
    def ended() -> bool:
        return not [t for t in threading.enumerate()
                    if any(name in t.name for name in SOCKET_THREADS)]
    wait_for(ended, timeout=30, message="the sockets' threads to end")


def test_closed_client_sockets_leave_nothing_to_the_cycle_collector(api_port) -> None:
    port = api_port
    _open_sockets(port, 3)  # warm: the hub's reader, lazily built module state
    _quiet()
    gc.collect()
    gc.disable()
    try:
        started = time.monotonic()
        _open_sockets(port, SOCKETS)
        _quiet()
        elapsed = time.monotonic() - started
        left = gc.collect()
        time.sleep(elapsed)  # the same time with no socket: what the server leaves anyway
        idle = gc.collect()
    finally:
        gc.enable()
    per_socket = (left - idle) / SOCKETS
    assert per_socket <= BOUND_PER_SOCKET, (
        f"{per_socket:.1f} objects in reference cycles a closed socket ({left} after "
        f"{SOCKETS} sockets, {idle} idle)")
