"""flask-sock's ``Sock`` whose sockets are freed as soon as they close.

flask-sock's view defines a ``Response`` subclass inside every request, whose
method closes over the socket; a class always refers to itself, so each closed
socket (simple-websocket's server, its wsproto and HTTP parsers, the WSGI
request, and everything our handler hung on them) stayed in a reference cycle
until the cycle collector's next full collection: 121 objects a socket, and
pauses of 240-520 ms in an API process that had served a few thousand sockets.
This view takes the same steps (a ``Server`` on the request, the handler, a
close) and answers with one response class, made once, holding only the
server mode.

It also hands simple-websocket a socket whose ``send`` writes everything:
simple-websocket writes each frame with one ``socket.send``, which on a
non-blocking socket (gevent's, the API's) writes only what the kernel's buffer
takes, and the rest of the frame was lost; a client whose buffer was nearly
full (a slow reader) then got a broken frame stream instead of its messages.
A write that has not finished within two ping intervals gives the client up
(``WholeWrites``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from flask import Blueprint, Response, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server

#: Where each server keeps the client's socket in the WSGI environment.
SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


class WholeWrites:
    """A socket whose ``send`` sends all of ``data``, as every caller in simple-websocket
    assumes, one write at a time (the handler's sender and simple-websocket's pings
    write from different threads; a frame cut by a wait must not be interleaved).

    With ``write_seconds``, a write that has not finished by then gives the client up:
    the connection is shut down and ``TimeoutError`` raised. A client that stopped
    reading otherwise held its socket, the kernel's full send buffer, its handler and
    up to ``SUBSCRIPTION_BACKLOG`` events for good: the sender blocked in the write
    never saw its backlog overflow, and simple-websocket's ping blocked behind it.
    """

    def __init__(self, sock: Any, write_seconds: float | None = None) -> None:
        self._sock, self._write_seconds = sock, write_seconds
        self._lock = threading.Lock()

    def send(self, data: bytes, flags: int = 0) -> int:
        self.sendall(data, flags)
        return len(data)

    def sendall(self, data: bytes, flags: int = 0) -> None:
        if self._write_seconds is None:
            with self._lock:
                self._sock.sendall(data, flags)
            return
        deadline = time.monotonic() + self._write_seconds
        if not self._lock.acquire(timeout=self._write_seconds):
            self._give_up(len(data))
        try:
            # The socket's timeout bounds a whole sendall (gevent's and Python's alike).
            # Only this write sees it: simple-websocket's reader (it pings, so it selects
            # before each recv) never waits in recv.
            previous = self._sock.gettimeout()
            self._sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                self._sock.sendall(data, flags)
            except TimeoutError:
                self._give_up(len(data))
            finally:
                self._sock.settimeout(previous)
        finally:
            self._lock.release()

    def _give_up(self, size: int) -> NoReturn:
        with contextlib.suppress(OSError):  # wakes the reader, frees the kernel's buffers
            self._sock.shutdown(socket.SHUT_RDWR)
        raise TimeoutError(f"a write of {size} bytes did not finish within "
                           f"{self._write_seconds:g} s: the client stopped reading")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def whole_writes(environ: dict[str, Any], write_seconds: float | None = None) -> dict[str, Any]:
    """``environ`` with its client socket (gunicorn's or werkzeug's) made ``WholeWrites``."""
    return {**environ, **{key: WholeWrites(environ[key], write_seconds) for key in SOCKET_KEYS
                          if key in environ}}


def write_seconds(options: dict[str, Any]) -> float | None:
    """How long a write to a socket may take: two ping intervals, the time in which a
    peer must answer a ping (a peer that reads nothing answers none); no bound without
    pings."""
    ping = options.get("ping_interval")
    return 2 * ping if ping else None


class Handled(Response):
    """The answer of a WebSocket view: the server wrote the socket itself."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()  # gunicorn's sign that the handler took the socket over
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


class LeanSock(Sock):
    """``Sock`` with a view that leaves no reference cycle behind (see the module)."""

    def route(self, path: str, bp: Blueprint | None = None,
              **kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
        def decorator(handler: Callable[..., None]) -> Callable[..., None]:
            def websocket_route(*args: Any, **view_kwargs: Any) -> Response:
                options = current_app.config.get("SOCK_SERVER_OPTIONS", {})
                ws = Server(whole_writes(request.environ, write_seconds(options)), **options)
                with contextlib.suppress(ConnectionClosed):
                    handler(ws, *args, **view_kwargs)
                with contextlib.suppress(Exception):  # closed already
                    ws.close()
                return Handled(ws.mode)

            websocket_route.__name__ = handler.__name__
            websocket_route.__doc__ = handler.__doc__
            kwargs["websocket"] = True
            if bp is not None:
                bp.route(path, **kwargs)(websocket_route)
            elif self.app is not None:
                self.app.route(path, **kwargs)(websocket_route)
            else:
                if self.bp is None:
                    self.bp = Blueprint("__flask_sock", __name__)
                self.bp.route(path, **kwargs)(websocket_route)
            return handler

        return decorator
