"""Every WebSocket frame the API writes arrives whole, also when the kernel takes part of it.

What was tried: simple-websocket's server on one end of a real socket pair whose ``send``
takes at most 7 bytes a call, as ``send`` on a non-blocking socket (gevent's, the API's)
does when the client's buffer is nearly full (a slow reader); the API's socket wrapper
(``whole_writes``) given as its environment; messages of 1, 125, 126 and 70,000 bytes, a
close. The client end parses every byte with wsproto. simple-websocket writes a frame
with one ``send``: on the bare socket the client got the first 7 bytes of each write (the
handshake reply's too) and none of the rest; through the wrapper, every message and the
close.
"""

from __future__ import annotations

import socket
import threading

import pytest
from simple_websocket import Server
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.utilities import RemoteProtocolError

from webapp.api.lean_sock import whole_writes

pytestmark = pytest.mark.timeout(60)

MESSAGES = ["a", "b" * 125, "c" * 126, "d" * 70_000]


class ShortWrites(socket.socket):
    """A socket whose ``send`` takes at most 7 bytes a call (its documented right)."""

    def send(self, data: bytes, flags: int = 0) -> int:  # type: ignore[override]
        return super().send(bytes(data[:7]), flags)


def serve(environ_of: object) -> tuple[list[object], int]:
    """Run a server over a socket pair; returns what the client end parsed, and how many
    bytes it got."""
    left, right = socket.socketpair()
    server_end = ShortWrites(fileno=left.detach())
    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="localhost", target="/ws/client/x")).decode()
    # The server answers the key the client sent (wsproto checks the reply against it).
    key = next(line.split(":", 1)[1].strip() for line in request.split("\r\n")
               if line.lower().startswith("sec-websocket-key:"))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/ws/client/x", "QUERY_STRING": "",
               "HTTP_HOST": "localhost", "HTTP_CONNECTION": "Upgrade",
               "HTTP_UPGRADE": "websocket", "HTTP_SEC_WEBSOCKET_KEY": key,
               "HTTP_SEC_WEBSOCKET_VERSION": "13", "gunicorn.socket": server_end}
    received: list[bytes] = []

    def read() -> None:
        right.settimeout(10)
        while chunk := right.recv(65536):
            received.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    ws = Server(environ_of(environ))
    for text in MESSAGES:
        ws.send(text)
    ws.close(1000, "done")
    server_end.shutdown(socket.SHUT_WR)  # all is written: the client end reads to its end
    reader.join(15)
    server_end.close()
    right.close()
    events: list[object] = []
    client.receive_data(b"".join(received))
    try:
        events.extend(client.events())
    except RemoteProtocolError as exc:
        events.append(exc)
    return events, len(b"".join(received))


@pytest.mark.parametrize("write_seconds", [None, 5.0], ids=["no deadline", "a deadline"])
def test_frames_written_through_the_wrapper_arrive_whole_on_a_socket_that_writes_short(
        write_seconds: float | None) -> None:
    events, _ = serve(lambda environ: whole_writes(environ, write_seconds))
    assert isinstance(events[0], AcceptConnection)
    texts = [e.data for e in events if isinstance(e, TextMessage)]
    assert texts == MESSAGES
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000


def test_the_bare_socket_loses_the_rest_of_each_frame() -> None:
    """The same run without the wrapper, so the test above can fail: each write (the
    handshake reply's too) arrives cut to its first 7 bytes, and the client has no
    message at all."""
    events, size = serve(lambda environ: environ)
    assert not [e for e in events if isinstance(e, (AcceptConnection, TextMessage))]
    assert size <= 7 * (2 + len(MESSAGES)), size  # the reply, the messages, the close
