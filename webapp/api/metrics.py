"""The API server's Prometheus metrics: requests, their latency, open sockets, processes.

gunicorn runs several API processes and a scrape reaches one of them, so the
counters live in prometheus_client's multiprocess mode: ``run`` gives the
server a private ``PROMETHEUS_MULTIPROC_DIR`` (``multiprocess_dir``), every
process writes its values there, and ``/metrics`` sums the files of all of
them. A worker that exits is marked dead (``child_exit``): its counts stay in
the sums, its open-socket gauge leaves them. The ``process_*`` series are the
whole server's: the gunicorn master's and its workers' summed (start time and
fd limit: the master's). Outside gunicorn (an app built in-process) the
metrics are the process's own.

Series are bounded: ``route`` is the Flask URL rule (``/api/jobs/<job_id>``,
``unmatched`` for a 404 with no rule), never the path, and a method HTTP does
not define is ``other``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

from webapp.auth import metrics_guard
from webapp.outage import ungated

#: The environment variable prometheus_client reads for its multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Methods kept as themselves in the ``method`` label; any other is ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: ``route`` of a request no URL rule matched.
UNMATCHED = "unmatched"
#: Latency buckets, seconds: a submit is a few ms, a listing may take a second.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Per-process series taken from the gunicorn master rather than summed.
_MASTER_ONLY = {"process_start_time_seconds", "process_max_fds"}

blueprint = Blueprint("metrics", __name__)


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh private directory as ``PROMETHEUS_MULTIPROC_DIR`` while the server runs
    (its workers inherit it), removed at the end. A directory the environment named is
    not used: a file left there by an earlier run would be summed into this one's."""
    path = tempfile.mkdtemp(prefix="emp-api-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    # prometheus_client picks its value store when first imported; it may have been
    # imported before the variable was set (a plugin, tracing), so pick again.
    values.ValueClass = values.get_value_class()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        values.ValueClass = values.get_value_class()


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook (in the master): drop the dead worker's live gauges."""
    multiprocess.mark_process_dead(worker.pid)


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (the gunicorn workers), from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if len(fields) > 1 and int(fields[1]) == parent:
            out.append(int(name))
    return out


class ServerProcesses:
    """``process_*`` of the gunicorn master and its workers, summed: one figure per server."""

    def collect(self) -> Iterable[Metric]:
        master = os.getppid()
        totals: dict[str, Metric] = {}
        for pid in [master, *_children(master)]:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                kept = totals.get(family.name)
                if kept is None:
                    totals[family.name] = family
                elif family.name not in _MASTER_ONLY:
                    kept.samples = [s._replace(value=s.value + other.value)
                                    for s, other in zip(kept.samples, family.samples,
                                                        strict=False)]
        return list(totals.values())


class ApiMetrics:
    """The API's metrics, in this app's own registry (several apps in one test process
    do not collide); multiprocess when ``PROMETHEUS_MULTIPROC_DIR`` is set."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        shared = bool(os.environ.get(MULTIPROC_ENV))
        own = None if shared else self.registry  # multiprocess: values go to the files
        self.requests = Counter(
            "emp_api_requests_total", "HTTP requests answered, by Flask route and status.",
            ("method", "route", "status"), registry=own)
        self.duration = Histogram(
            "emp_api_request_duration_seconds",
            "Seconds from a request's arrival in Flask to its answer (WebSockets left out).",
            ("method", "route"), buckets=BUCKETS, registry=own)
        self.open_sockets = Gauge(
            "emp_api_open_sockets", "WebSockets open now, by kind (client, monitor).",
            ("kind",), registry=own, multiprocess_mode="livesum")
        for kind in ("client", "monitor"):
            self.open_sockets.labels(kind)  # 0, not absent, before the first socket
        if shared:
            multiprocess.MultiProcessCollector(self.registry)
            self.registry.register(ServerProcesses())
        else:
            ProcessCollector(registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def api_metrics() -> ApiMetrics:
    return current_app.extensions["emp_metrics"]


def _started() -> None:
    g.emp_started = time.perf_counter()


def _answered(response: Response) -> Response:
    """after_request: count the request under its URL rule and time it."""
    started = g.pop("emp_started", None)
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "other"
    metrics = api_metrics()
    metrics.requests.labels(method, route, str(response.status_code)).inc()
    if started is not None and not route.startswith("/ws/"):  # a socket's time is its life
        metrics.duration.labels(method, route).observe(time.perf_counter() - started)
    return response


@contextlib.contextmanager
def socket_open(kind: str) -> Iterator[None]:
    """Count a WebSocket of ``kind`` as open while the block runs."""
    with api_metrics().open_sockets.labels(kind).track_inprogress():
        yield


@blueprint.get("/metrics")
@ungated
@metrics_guard
def scrape():  # noqa: ANN201 - Flask response
    """Prometheus text of every API process (admin, unless EMP_METRICS_PUBLIC=1)."""
    return Response(api_metrics().exposition(), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Attach the metrics; the timer runs before every other hook (the outage gate and the
    socket token check answer requests too), so every answer is counted."""
    app.extensions["emp_metrics"] = ApiMetrics()
    app.register_blueprint(blueprint)
    app.before_request_funcs.setdefault(None, []).insert(0, _started)
    app.after_request(_answered)
