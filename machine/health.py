"""The machine's health server (port 9090): liveness, readiness, status, logs, restarts.

- ``GET /health``: 200 while the machine process runs.
- ``GET /ready``: 200 when every worker and service is RUNNING under supervisor,
  every worker's current process has registered in Redis and no worker reports
  its service unhealthy (a worker whose ComfyUI is down or restarting claims
  nothing); else 503 with the ones that are not and why.
- ``GET /status``: machine id, GPUs, workers (supervisor state, pid, capability
  profile, status with its reason, and current jobs from the registry),
  services, uptime, log shipping.
- ``GET /metrics``: the ``/status`` figures as Prometheus series (``machine.metrics``).
- ``GET /logs/<service>?lines=N``: the tail of a program's log, or of supervisord's own
  (``supervisord``: which program exited how) (N <= 10000, default 100).
- ``POST /restart/<service>``: restart a program through supervisor; 503 with
  supervisor's error when it cannot start (e.g. it exits at once).

``<service>`` is a program name (``simulation-0``, ``comfyui-server-0``) or a
worker id. Unknown names get 404 JSON. With ``EMP_HEALTH_TOKEN`` set, ``/logs``
and ``/restart`` need ``Authorization: Bearer <token>``: logs may hold job
data and a restart kills running work. So does ``/metrics``, as the other
services' ``/metrics`` are admin routes, unless ``EMP_METRICS_PUBLIC=1``
opens it to scrapers on purpose.

Served by werkzeug's threaded WSGI server on a thread of ``emp machine``: the
app reads the runtime's in-process state (the supervisor client, GPU
inventory, uptime, shipping counters) and must stop with it; gunicorn's
arbiter wants the main thread and its own process, and a health endpoint
polled every few seconds needs no worker pool.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, get_sockaddr, make_server, select_address_family

from capability_router.whole_numbers import whole_number
from machine import metrics
from machine.errors import MachineError, UnknownProgram

logger = logging.getLogger(__name__)

bp = Blueprint("machine_health", __name__)

#: Lines a log tail returns by default, and at most.
DEFAULT_LINES = 100
MAX_LINES = 10_000


class MachineView(Protocol):
    """What the health server needs of the machine runtime."""

    health_token: str | None
    metrics_public: bool

    def liveness(self) -> dict[str, Any]: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...

    def program_names(self) -> list[str]: ...

    def tail(self, name: str, lines: int) -> list[str]: ...

    def restart(self, name: str) -> dict[str, Any]: ...


def _machine() -> MachineView:
    return current_app.extensions["emp_machine"]


def _error(status: int, message: str, **fields: Any):  # noqa: ANN202 - Flask response
    response = jsonify(error=message, **fields)
    response.status_code = status
    return response


def _authorized() -> bool:
    token = _machine().health_token
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # Bytes, not str: compare_digest raises TypeError on non-ASCII str (a 500). WSGI hands
    # header values over as latin-1, so that encoding gives back the bytes sent.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("latin-1", "replace"), token.encode())


@bp.get("/health")
def health():  # noqa: ANN201 - Flask response
    return jsonify(_machine().liveness())


@bp.get("/ready")
def ready():  # noqa: ANN201 - Flask response
    is_ready, body = _machine().readiness()
    response = jsonify(body)
    response.status_code = 200 if is_ready else 503
    return response


@bp.get("/status")
def status():  # noqa: ANN201 - Flask response
    return jsonify(_machine().status())


@bp.get("/metrics")
def scrape():  # noqa: ANN201 - Flask response
    if not (_machine().metrics_public or _authorized()):
        return _error(401, "a bearer token is required (EMP_HEALTH_TOKEN), or "
                           "EMP_METRICS_PUBLIC=1 for scrapers")
    return Response(generate_latest(current_app.extensions["emp_machine_metrics"]),
                    content_type=CONTENT_TYPE_LATEST)


@bp.get("/logs/<name>")
def logs(name: str):  # noqa: ANN201 - Flask response
    if not _authorized():
        return _error(401, "a bearer token is required (EMP_HEALTH_TOKEN)")
    given = request.args.getlist("lines")
    if len(given) > 1:  # Flask's get() took the first, dropping the rest without a word
        return _error(400, f"lines: given {len(given)} times; send it once")
    raw = given[0] if given else str(DEFAULT_LINES)
    count = whole_number(raw, 6)  # '²' and over 4,300 digits were each a 500
    if count is None or not 0 < count <= MAX_LINES:
        return _error(400, f"lines must be an integer from 1 to {MAX_LINES}, got {raw!r}")
    lines = _machine().tail(name, count)
    return jsonify(service=name, lines=lines)


@bp.post("/restart/<name>")
def restart(name: str):  # noqa: ANN201 - Flask response
    if not _authorized():
        return _error(401, "a bearer token is required (EMP_HEALTH_TOKEN)")
    info = _machine().restart(name)
    return jsonify(service=name, restarted=True, **info)


def _unknown_program(exc: UnknownProgram):  # noqa: ANN202 - Flask response
    return _error(404, str(exc), services=_machine().program_names())


def _machine_error(exc: MachineError):  # noqa: ANN202 - Flask response
    """supervisord not answering (starting, stopping, crashed): unavailable, not a 500."""
    return _error(503, str(exc))


def _http_error(exc: HTTPException):  # noqa: ANN202 - Flask response
    """An unknown path or a wrong method in the app's JSON, not Flask's HTML page; a 405
    keeps its ``Allow``."""
    response = _error(exc.code or 500, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected(exc: Exception):  # noqa: ANN202 - Flask response
    logger.exception("health server: unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal error")


def create_app(machine: MachineView) -> Flask:
    """The health app of ``machine``."""
    app = Flask(__name__)
    app.extensions["emp_machine"] = machine
    app.extensions["emp_machine_metrics"] = metrics.registry(machine.status)
    app.register_blueprint(bp)
    app.register_error_handler(UnknownProgram, _unknown_program)
    app.register_error_handler(MachineError, _machine_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _check_bind(host: str, port: int) -> None:
    """OSError with the system's reason when ``host:port`` cannot be bound. werkzeug's
    ``make_server`` prints its own advice ("Port N is in use by another program...") and
    exits instead of raising, so a machine refusing to start said it twice."""
    family = select_address_family(host, port)  # the family and address werkzeug binds
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as its server does
        probe.bind(get_sockaddr(host, port, family))


class HealthServer:
    """``create_app(machine)`` on a werkzeug threaded server, on a daemon thread."""

    def __init__(self, machine: MachineView, host: str, port: int) -> None:
        """Bind ``host:port``; OSError when that cannot be done (port in use, bad address)."""
        _check_bind(host, port)
        try:
            self.server: BaseWSGIServer = make_server(host, port, create_app(machine),
                                                      threaded=True)
        except SystemExit:  # werkzeug prints the bind error and exits instead of raising it
            raise OSError(f"address in use or not available ({host}:{port})") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="emp-health",
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_port

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
