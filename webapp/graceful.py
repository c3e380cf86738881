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

Open WebSockets are no idle connections: the hooks of ``webapp.stop_hooks``
close them (the API's with 1001), or gunicorn would wait out its graceful
timeout and kill the worker, the clients seeing their TCP connection drop.

Two messages of gevent's were printed at every start and stop of the API and
are not said here (the reasons are at ``_patch_warnings`` and
``_quiet_logging_teardown``).
"""

from __future__ import annotations

import logging
import re
import warnings
import weakref
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from webapp.json_errors_http import JsonErrors
from webapp.stop_hooks import stop_hooks

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
        self._quitting = False
        try:
            super().init_process()
        finally:
            _quiet_logging_teardown()

    def patch(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().patch()
        for warning in _patch_warnings(caught):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)

    def timeout_ctx(self) -> _IdleWait:
        # gunicorn wraps exactly the wait for a connection's next request in this.
        return _IdleWait(self._idle, super().timeout_ctx())

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(self._close_idle)
        _spawn_stop_hooks()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """Quick shutdown (SIGINT, SIGQUIT): Ctrl-C in a terminal sends the worker SIGINT
        and its master then SIGQUIT; the second exit, run while the first was ending the
        interpreter, printed "SystemExit: 0" with a traceback. It is ignored now. The stop
        hooks still run: the 0.1 s gunicorn waits before it exits sends their 1001s."""
        if self._quitting:
            return
        self._quitting = True
        _spawn_stop_hooks()
        super().handle_quit(sig, frame)

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


def _spawn_stop_hooks() -> None:
    """Run each of ``webapp.stop_hooks``'s hooks in a greenlet of its own."""
    for hook in stop_hooks():
        gevent.spawn(hook)


#: Modules that import names of ``ssl`` directly, which gevent's patch cannot reach, and
#: which the API never uses: redis-py (8.x) imports its asyncio client with ``import
#: redis``, and the API, a gevent process, uses the synchronous one only.
_UNUSED_UNPATCHED = re.compile(r"redis\.asyncio(\.|$)")


def _patch_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    """The warnings of gevent's ``patch_all`` worth saying. The gunicorn master imports
    ``ssl`` (with redis) before it forks, so gevent warned in every worker at every start
    that patching ssl late "may lead to errors", naming the modules it could not patch:
    only redis's asyncio client, unused here. A warning naming any other module is kept."""
    kept = []
    for warning in caught:
        text = str(warning.message)
        unpatched = re.findall(r"'([\w.]+) \(", text.partition("(NOT patched)")[2])
        if warning.category.__name__ == "MonkeyPatchWarning" and unpatched and all(
                _UNUSED_UNPATCHED.match(name) for name in unpatched):
            continue
        kept.append(warning)
    return kept


def _quiet_logging_teardown() -> None:
    """At the worker's exit, handlers freed while the interpreter tears down ran logging's
    weakref callback, whose lock asks gevent's ``get_ident``, torn down by then: "Exception
    ignored in _removeHandlerRef ... TypeError: 'NoneType' object is not callable" with a
    traceback, at every stop of every API process (gevent issue 2148, open). The handlers
    are swapped for references without that callback; ``logging.shutdown`` still flushes
    and closes them at exit."""
    with logging._lock:  # type: ignore[attr-defined] - private, stable since Python 2
        handlers = [ref() for ref in logging._handlerList]  # type: ignore[attr-defined]
        logging._handlerList[:] = [  # type: ignore[attr-defined]
            weakref.ref(handler) for handler in handlers if handler is not None]
