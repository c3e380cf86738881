"""WebSocket routes of the API, on flask-sock (``lean_sock``); both take the bearer token.

The token comes as ``Authorization: Bearer`` or ``?token=`` (browsers cannot
set headers on a WebSocket). It is checked before the upgrade: a refused
handshake gets an HTTP 401 (no or bad token) or 403 (a customer token on the
monitor feed) with the usual JSON error, and no socket is opened. The server
pings every ``EMP_WS_PING_SECONDS`` (25 s); a connection whose pong does not
come back before the next ping is closed, as is one a write to which has not
finished within two intervals (``lean_sock.WholeWrites``). A customer with all
its sockets open (``EMP_LIMIT_SOCKETS``) gets 429 with ``Retry-After`` before
the upgrade; the place taken for the handshake is given back at once when no
socket results.
A repeated ``?token=`` or ``?last_event_id=`` is refused (400) before the upgrade.
When the process is told to stop (a deploy, ``emp up`` ending) every open socket
is closed with 1001 "server stopping", and its client resumes elsewhere with
``?last_event_id=``; before, gunicorn waited out its graceful timeout (5 s) and
killed the process, and the clients saw their connection drop (1006) without a word.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, g, request

from webapp.api.client_socket import ClientConnection
from webapp.api.lean_sock import LeanSock
from webapp.api.limits import Limited
from webapp.api.metrics import socket_open
from webapp.api.monitor_socket import MonitorConnection
from webapp.api.session import close_socket
from webapp.auth import authenticate, error
from webapp.backend import backend
from webapp.query import single
from webapp.stop_hooks import at_stop

sock = LeanSock()

CLIENT_PATH = "/ws/client/"
MONITOR_PATH = "/ws/monitor/"
#: WebSocket close code "going away" (RFC 6455): the server is stopping.
CLOSE_GOING_AWAY = 1001
#: Seconds a socket closed at a stop waits for its client's close reply: within
#: gunicorn's graceful timeout (5 s), after which the process is killed, not stopped.
STOP_CLOSE_WAIT_SECONDS = 2.0

#: The sockets open in this process, for ``close_open_sockets``.
_open_sockets: weakref.WeakSet[Any] = weakref.WeakSet()


@contextmanager
def _open(ws: Any) -> Iterator[None]:
    _open_sockets.add(ws)
    try:
        yield
    finally:
        _open_sockets.discard(ws)


def close_open_sockets() -> None:
    """Close every socket open in this process with 1001, all at once (each waits up to
    ``STOP_CLOSE_WAIT_SECONDS`` for its client's reply)."""
    for ws in list(_open_sockets):
        threading.Thread(target=close_socket, daemon=True, name="emp-ws-stop", args=(
            ws, CLOSE_GOING_AWAY, "server stopping", STOP_CLOSE_WAIT_SECONDS)).start()


def check_token() -> Any:
    """before_request for the socket paths: refuse the handshake without a valid token."""
    if not request.path.startswith((CLIENT_PATH, MONITOR_PATH)):
        return None
    single("last_event_id")  # 400 naming it when repeated, before any socket opens
    principal = authenticate(current_app.config["EMP_SETTINGS"],
                             request.headers.get("Authorization"), single("token"))
    if principal is None:
        response = error(401, "missing or invalid bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="emp"'
        return response
    if request.path.startswith(MONITOR_PATH) and not principal.admin:
        return error(403, "the monitor feed needs an admin token")
    g.principal = principal
    if request.path.startswith(CLIENT_PATH):
        try:
            g.socket_place = current_app.extensions["emp_limits"].open_socket(
                principal, uuid.uuid4().hex)
        except Limited as exc:
            response = error(429, str(exc), limit=exc.limit)
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
    return None


def free_unused_place(_: BaseException | None = None) -> None:
    """teardown_request: give back the place of a handshake that opened no socket (no
    upgrade, no route: a 400 or 404). A socket takes its place over and frees it itself."""
    place = g.pop("socket_place", None)
    if place is not None:
        place.close()


@sock.route("/ws/client/<client_id>")
def client_socket(ws, client_id: str) -> None:  # noqa: ANN001 - simple_websocket.Server
    place = g.pop("socket_place", None)  # the socket is open: the place is its own now
    with socket_open("client"), _open(ws):
        ClientConnection(ws, client_id, g.principal, backend(),
                         current_app.extensions["emp_events"],
                         current_app.config["EMP_SETTINGS"].idempotency_seconds,
                         current_app.extensions["emp_limits"], place,
                         ).run(request.args.get("last_event_id"))


@sock.route("/ws/monitor/<monitor_id>")
def monitor_socket(ws, monitor_id: str) -> None:  # noqa: ANN001 - simple_websocket.Server
    with socket_open("monitor"), _open(ws):
        MonitorConnection(ws, monitor_id, backend(), current_app.extensions["emp_events"],
                          ).run(request.args.get("last_event_id"))


def init_app(app: Flask) -> None:
    app.before_request(check_token)
    app.teardown_request(free_unused_place)
    sock.init_app(app)
    at_stop(close_open_sockets)
