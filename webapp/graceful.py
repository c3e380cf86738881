"""gunicorn's gevent worker, stopping without waiting on idle keep-alive connections.

On SIGTERM gunicorn stops accepting, then waits up to ``graceful_timeout``
for every open connection to end. A client that keeps its connection alive
between requests (``requests.Session``, every HTTP client library, browsers)
holds it open for the whole keep-alive time, so each restart of the API
waited the full graceful timeout even with no request in flight. HTTP lets a
server close an idle keep-alive connection at any time (the client opens a
new one), so once the worker is stopping, connections waiting for their next
request are closed at once; requests in flight still finish. Such a close ends
the connection's greenlet with ``GreenletExit``, which gunicorn took for an
error ("Error handling request (no URI read)" and a traceback at every stop):
it is a normal end of the connection, logged at debug only.
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from webapp.json_errors_http import JsonErrors

#: Seconds between sweeps of idle connections while the worker stops.
SWEEP_SECONDS = 0.1


class _IdleWait:
    """Marks the current greenlet idle while it waits for a connection's next request."""

    def __init__(self, idle: set[Any], timeout: gevent.Timeout) -> None:
        self.idle, self.timeout = idle, timeout

    def __enter__(self) -> _IdleWait:
        self.greenlet = gevent.getcurrent()
        self.idle.add(self.greenlet)
        self.timeout.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        self.idle.discard(self.greenlet)
        return self.timeout.__exit__(*exc)


class GeventWorker(JsonErrors, _GeventWorker):
    """The gevent worker; idle keep-alive connections end as soon as it stops, and what it
    refuses is answered in JSON (``webapp.json_errors_http``)."""

    def init_process(self) -> None:
        self._idle: set[Any] = set()
        super().init_process()

    def timeout_ctx(self) -> _IdleWait:
        # gunicorn wraps exactly the wait for a connection's next request in this.
        return _IdleWait(self._idle, super().timeout_ctx())

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(self._close_idle)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, gevent.GreenletExit):  # an idle connection closed at stop
            self.log.debug("closed an idle connection at stop")
            return
        super().handle_error(req, client, addr, exc)

    def _close_idle(self) -> None:
        while True:
            for greenlet in list(self._idle):
                greenlet.kill(block=False)
            gevent.sleep(SWEEP_SECONDS)
