"""A server-side close wakes the socket's handler, which waits in ``receive`` with a long
timeout (``RECEIVE_WAKE_SECONDS``) so idle sockets do not wake every few seconds."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from simple_websocket import ConnectionClosed
from simple_websocket.ws import Base

from webapp.api.client_socket import RECEIVE_WAKE_SECONDS
from webapp.api.session import close_socket


class _UnansweredSocket(SimpleNamespace):
    """simple_websocket's state as ``Base.receive`` reads it; the client never answers the
    close (no reader thread sets the event)."""

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        self.connected = False


def test_a_server_close_the_client_never_answers_ends_the_handlers_receive() -> None:
    """Tried: a handler blocked in simple_websocket's real ``receive`` with the handler's
    timeout, then ``close_socket`` (as the sender's drop and the renewer's lost place call
    it) on a client that never replies to the close. Without the wake-up the handler sat
    out its whole timeout (30 s, 5 s before), holding the socket and its gauge; now
    ``receive`` raises ConnectionClosed as soon as ``close_socket`` returns."""
    ws = _UnansweredSocket(connected=True, input_buffer=[], event=threading.Event(),
                           close_reason=1000, close_message=None, thread=None)
    outcome: list[object] = []

    def handler() -> None:
        started = time.monotonic()
        try:
            outcome.append(Base.receive(ws, timeout=RECEIVE_WAKE_SECONDS))
        except ConnectionClosed as exc:
            outcome.append(exc)
        outcome.append(time.monotonic() - started)

    thread = threading.Thread(target=handler, daemon=True)
    thread.start()
    time.sleep(0.2)  # the handler is waiting
    close_socket(ws, 1008, "too far behind")
    thread.join(5)
    assert not thread.is_alive(), "the handler still waits in receive"
    assert isinstance(outcome[0], ConnectionClosed)
    assert outcome[1] < 2.0
