"""Run a Flask app under gunicorn's threaded worker, which carries WebSockets.

flask-sock takes over the connection's socket in a worker thread, so one
process with many threads serves REST and long-lived WebSockets together.
One process keeps the in-process event fan-out (and webhook dispatcher) single.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication


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
        return self.factory()


def serve(factory: Callable[[], Any], host: str, port: int, threads: int,
          access_log: bool = False) -> None:
    """Serve ``factory()`` on host:port until stopped (SIGTERM/SIGINT)."""
    options = {
        "bind": f"{host}:{port}", "workers": 1, "worker_class": "gthread",
        "threads": threads, "timeout": 30, "graceful_timeout": 5, "keepalive": 30,
        "accesslog": "-" if access_log else None, "loglevel": "info",
    }
    _Gunicorn(factory, options).run()
