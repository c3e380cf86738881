"""The project's WebSocket client (the tests', the demo's, the ComfyUI connector's) sees
frames that arrive together with the handshake answer.

simple_websocket's own client left them unread, and a refused socket's error
then looked like a bare 1005 close (a CI run failed so on a loaded machine).
"""

from __future__ import annotations

import socket
import threading

import pytest
from simple_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, TextMessage

from emp_tasks.websocket_client import WebSocketClient as Client


def test_an_error_and_close_sent_with_the_handshake_answer_are_both_seen() -> None:
    """Tried: a server whose 101 answer, a text frame and a 1008 close go out in one write."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        ws = WSConnection(ConnectionType.SERVER)
        while not list(ws.events()):
            ws.receive_data(conn.recv(4096))
        conn.sendall(ws.send(AcceptConnection()) + ws.send(TextMessage(data="refused"))
                     + ws.send(CloseConnection(1008, "bad last_event_id")))
        done.wait(10)
        conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    ws = Client.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/ws")
    try:
        assert ws.receive(timeout=5) == "refused"
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive(timeout=5)
        assert closed.value.reason == 1008
    finally:
        done.set()
        server.join(5)
        listener.close()
