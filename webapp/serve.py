"""Run a Flask app under gunicorn: gevent workers for the API, threads for the rest.

flask-sock holds a connection's handler (and simple-websocket a reader) for
as long as a WebSocket is open. Under the threaded worker that is a thread
each, so 64 idle browser tabs filled a process and REST waited behind them.
The API therefore runs gunicorn's gevent worker: every connection is a
greenlet (a few KB), the threads the app starts (event fan-out, socket
senders) become greenlets by gevent's monkey-patching, and one process holds
thousands of sockets. gevent is the event loop flask-sock and gunicorn both
support; it needs no change to the Flask code. The webhook service has no
sockets and keeps the threaded worker. Each API process runs its own event
fan-out, so the API may run several (one per core by default).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

#: Allocations between young-generation collections (CPython's default is 700). An API
#: process holding thousands of sockets holds many long-lived objects, which every full
#: collection scans: with 2,000 sockets, 100 submits/s and 1,000 events/s, each API process
#: spent ~1 s of CPU in garbage collection over a 40 s bench, 0.6-0.8 s of it in 5-6 full
#: collections (~130 ms each: a pause every request in flight waits out); with this and
#: the freeze below, ~0.5 s in 3. Cyclic garbage waits for up to this many allocations.
GC_YOUNG_THRESHOLD = 10_000


class _Gunicorn(BaseApplication):
    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in the worker process, after the fork: background threads belong there.
        app = self.factory()
        # What the process holds once built (modules, the apps, their config) lives as
        # long as it does: frozen, no collection scans it again.
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
        return app


def serve(factory: Callable[[], Any], host: str, port: int, threads: int,
          access_log: bool = False, processes: int = 1, connections: int | None = None,
          hooks: dict[str, Callable[..., Any]] | None = None) -> None:
    """Serve ``factory()`` on host:port until stopped (SIGTERM/SIGINT): with
    ``connections``, gevent workers holding that many connections each, else
    ``threads`` threads per process. ``hooks``: gunicorn server hooks by name."""
    if connections:
        from webapp.graceful import GeventWorker  # imports gevent: only for the API

        workers: dict[str, Any] = {"worker_class": GeventWorker,
                                   "worker_connections": connections}
    else:
        from webapp.json_errors_http import ThreadWorker

        workers = {"worker_class": ThreadWorker, "threads": threads}
    options = {
        "bind": f"{host}:{port}", "workers": processes, **workers,
        "timeout": 30, "graceful_timeout": 5, "keepalive": 30,
        "accesslog": "-" if access_log else None, "loglevel": "info",
        # Every gunicorn 27 on a host would share ~/.gunicorn/gunicorn.ctl otherwise.
        "control_socket_disable": True,
        **(hooks or {}),
    }
    _Gunicorn(factory, options).run()
