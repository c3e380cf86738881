"""WebSocket routes of the API, on flask-sock; both take the bearer token.

The token comes as ``Authorization: Bearer`` or ``?token=`` (browsers cannot
set headers on a WebSocket). A refused connection gets an ``error`` message
and a policy-violation close. flask-sock pings every 5 s; a connection whose
pong does not come back before the next ping is closed.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from flask_sock import Sock

from webapp.api.client_socket import ClientConnection
from webapp.api.monitor_socket import MonitorConnection
from webapp.auth import Principal, authenticate
from webapp.backend import backend

sock = Sock()

#: WebSocket close code for a refused token (RFC 6455 policy violation).
POLICY_VIOLATION = 1008


def _principal(ws) -> Principal | None:  # noqa: ANN001 - simple_websocket.Server
    principal = authenticate(current_app.config["EMP_SETTINGS"],
                             request.headers.get("Authorization"), request.args.get("token"))
    if principal is None:
        ws.send('{"type": "error", "error": "missing or invalid bearer token"}')
        ws.close(POLICY_VIOLATION, "unauthorized")
    return principal


@sock.route("/ws/client/<client_id>")
def client_socket(ws, client_id: str) -> None:  # noqa: ANN001
    principal = _principal(ws)
    if principal is None:
        return
    ClientConnection(ws, client_id, principal, backend(),
                     current_app.extensions["emp_events"]).run(request.args.get("last_event_id"))


@sock.route("/ws/monitor/<monitor_id>")
def monitor_socket(ws, monitor_id: str) -> None:  # noqa: ANN001
    principal = _principal(ws)
    if principal is None:
        return
    if not principal.admin:
        ws.send('{"type": "error", "error": "the monitor feed needs an admin token"}')
        ws.close(POLICY_VIOLATION, "forbidden")
        return
    MonitorConnection(ws, monitor_id, backend(),
                      current_app.extensions["emp_events"]).run(request.args.get("last_event_id"))


def init_app(app: Flask) -> None:
    sock.init_app(app)
