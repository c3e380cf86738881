"""Run a Flask app under gunicorn's threaded worker, which carries WebSockets.

flask-sock takes over the connection's socket in a worker thread, so one
process with many threads serves REST and long-lived WebSockets together.
Each process runs its own event fan-out, so the API may run several (one
per core by default); the webhook service runs one.
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
          access_log: bool = False, processes: int = 1) -> None:
    """Serve ``factory()`` on host:port until stopped (SIGTERM/SIGINT)."""
    options = {
        "bind": f"{host}:{port}", "workers": processes, "worker_class": "gthread",
        "threads": threads, "timeout": 30, "graceful_timeout": 5, "keepalive": 30,
        "accesslog": "-" if access_log else None, "loglevel": "info",
        # Every gunicorn 27 on a host would share ~/.gunicorn/gunicorn.ctl otherwise.
        "control_socket_disable": True,
    }
    _Gunicorn(factory, options).run()
