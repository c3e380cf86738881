"""Flower's own Redis calls behind the monitor's outage gate.

Flower's pages and API share the monitor's executor but not its handlers: during
an outage its Celery inspector, its control and task API (``blocking_runner``)
and its worker pages each waited on Redis per request (5 s a call on a hung
Redis, 10 s for a worker page, up to Celery's 120 s result-backend timeout for
``/api/task/result``), logged a warning per inspect method per request, and
answered 200 with stale workers or 404 instead of saying Redis was down.

Here they share the monitor's ``Outage``: the handlers of Flower's routes that
reach Redis get the ``FlowerGate`` mixin (during a known outage one request at
a time pings Redis, the others get 503 with ``Retry-After`` at once; a call
that fails marks the outage, logged once), ``GatedRunner`` turns Flower's
blocking calls' Redis errors into that 503, and ``GatedInspector`` skips
inspections during a known outage (one ping at a time decides whether it is
over). Routes that read only Flower's in-memory state (``/workers``, ``/tasks``,
``/api/tasks``...) keep answering from memory. The monitor's Celery app gives the
result backend the 5 s socket timeout (``create_monitor``).

Left open: a control call (a revoke...) that starts before the outage is known
waits in kombu's publish, which retries until Redis answers; every later one
gets its 503.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import tornado.web
from flower.api import control, tasks, workers
from flower.inspector import Inspector
from flower.urls import handlers as flower_handlers
from flower.utils.blocking import BlockingOperationRunner
from flower.views.workers import WorkerView
from tornado.web import url

from capability_router.errors import InvalidJob
from capability_router.outages import timed_out
from webapp.monitor.handlers import RedisUnavailable, until_outage
from webapp.monitor.state import MonitorState
from webapp.outage import REFUSING, RETRY_AFTER_SECONDS, UNAVAILABLE, log_failure, reason_of

logger = logging.getLogger(__name__)

#: Flower's task API handlers that publish or read results (the others read memory).
TASK_CALLS = (tasks.TaskApply, tasks.TaskAsyncApply, tasks.TaskSend, tasks.TaskResult,
              tasks.TaskAbort)


def _noted(state: MonitorState, exc: BaseException) -> RedisUnavailable:
    """Mark the outage (or note the refused write, also inside kombu's OperationalError),
    once per outage; the 503 to raise."""
    return RedisUnavailable(log_failure(exc, state.outage, state.refusals))


class GatedRunner(BlockingOperationRunner):
    """Flower's runner of blocking calls (its control and task API): a call that cannot
    reach Redis marks the monitor's outage and answers 503 (``RedisUnavailable``), instead
    of a warning per request and "Broker or result backend unavailable"; a submit EMP
    refuses (``InvalidJob``: an unknown task, a bad priority, pool or requirement) answers
    400 with the reason, not a 500 and a traceback."""

    def __init__(self, executor: Any, state: MonitorState) -> None:
        super().__init__(executor)
        self.state = state

    async def run(self, operation: str, target: str, func: Callable[..., Any], *args: Any,
                  connection_errors: tuple[type[BaseException], ...] = (),
                  **kwargs: Any) -> Any:
        def call() -> tuple[Any, BaseException | None]:
            try:
                return func(*args, **kwargs), None
            except UNAVAILABLE + tuple(REFUSING) + (InvalidJob,) as exc:
                return None, exc

        result, exc = await super().run(operation, target, call,
                                        connection_errors=connection_errors)
        if isinstance(exc, InvalidJob):  # a bad submit: nothing was filed, the client's error
            raise tornado.web.HTTPError(400, "%s", str(exc)) from None
        if exc is not None:
            raise _noted(self.state, exc)
        return result


class GatedInspector(Inspector):
    """Flower's Celery inspector: during a known outage an inspection is skipped unless it
    holds the probe (one at a time) and a ping finds Redis back; a broadcast that cannot
    reach Redis marks the outage instead of a warning per inspect method."""

    def __init__(self, io_loop: Any, capp: Any, timeout: float, state: MonitorState) -> None:
        super().__init__(io_loop, capp, timeout)
        self.state = state

    async def _inspect_all(self, workername: str | None) -> None:
        outage = self.state.outage
        with outage.probing() as admitted:
            if not admitted:
                return
            if outage.down:
                try:
                    await self.io_loop.run_in_executor(None, self.state.backend.redis.ping)
                except UNAVAILABLE as exc:
                    outage.failed(exc)
                    return
                outage.succeeded()
            try:  # a worker's page waits for this: not for methods left after the outage
                await until_outage(outage, super()._inspect_all(workername))
            except RedisUnavailable:
                return

    def _inspect(self, method: str, workername: str | None) -> None:
        """Flower's, with Redis errors marking the outage (logged once) and not logged per
        method; a success says Redis answers. Skipped once the outage is known: Flower
        runs at most 8 at once, and the methods queued behind a fleet inspection each
        waited their own timeout after the first had found the outage."""
        if self.state.outage.down:  # found since this inspection began: no 5 s wait more
            return
        destination = [workername] if workername else None
        inspect = self.capp.control.inspect(timeout=self.timeout, destination=destination)
        try:
            result = (getattr(inspect, method)() if method != "active"
                      else inspect.active(safe=True))
        except UNAVAILABLE as exc:
            self._failed(method, exc)
            return
        self.state.outage.succeeded()
        if result is None or "error" in result:
            logger.debug("Inspect method %s: no worker answered", method)
            return
        for worker, response in result.items():
            if response is not None:
                self.io_loop.add_callback(functools.partial(self._on_update, worker, method,
                                                            response))


    def _failed(self, method: str, exc: BaseException) -> None:
        """A broadcast that could not reach Redis starts an outage only if the monitor's
        ping fails too: after Redis restarted, the broadcast's pooled kombu connection
        fails once ("Connection closed by server") though Redis answers again, and that
        was a second outage in the log a second after the first one's end. A broadcast
        that timed out met a hung Redis: no ping then (it was a second socket timeout, and
        a worker's page that found the outage waited 10-15 s for its 503)."""
        outage = self.state.outage
        if not outage.down and not timed_out(exc):
            try:
                self.state.backend.redis.ping()
            except UNAVAILABLE:
                pass
            else:
                logger.debug("inspect method %s failed, Redis answers: %s", method, exc)
                return
        outage.failed(exc)


class FlowerGate(tornado.web.RequestHandler):
    """Mixed in front of a Flower handler whose request reaches Redis: the monitor's gate in
    ``prepare`` (during a known outage one request at a time pings, the others 503 at once),
    and an error that could not reach Redis answered 503 with ``Retry-After`` and the reason
    in plain text (Flower's own error style), logged once per outage, not per request."""

    @property
    def emp(self) -> MonitorState:
        return self.application.emp

    def reaches_redis(self) -> bool:
        """Whether this request would reach Redis (``/api/workers`` only with refresh)."""
        if isinstance(self, workers.ListWorkers):
            return self.get_argument("refresh", "") not in ("", "0", "false", "False")
        return True

    async def prepare(self) -> None:
        super().prepare()  # Flower's API: 401 without auth or FLOWER_UNAUTHENTICATED_API
        outage = self.emp.outage
        if not outage.down or not self.reaches_redis() or not self.current_user:
            return  # no login: Flower's own answer (401, or its login page), no ping
        with outage.probing() as admitted:
            if not admitted:
                raise RedisUnavailable()
            try:
                await self.application.io_loop.run_in_executor(
                    None, self.emp.backend.redis.ping)
            except UNAVAILABLE as exc:
                raise _noted(self.emp, exc) from None
        outage.succeeded()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, RedisUnavailable):
            return  # the outage logs itself, once
        if isinstance(value, UNAVAILABLE + tuple(REFUSING)):  # Flower's own call, uncaught
            _noted(self.emp, value)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, UNAVAILABLE + tuple(REFUSING)):
            exc = RedisUnavailable(reason_of(exc))
        elif status_code == 404 and self._failed_here():
            exc = RedisUnavailable()  # Flower's 404 for a worker it could not inspect
        if not isinstance(exc, RedisUnavailable):
            super().write_error(status_code, **kwargs)
            return
        self.finish(self._unavailable(exc.log_message or ""))

    def finish(self, chunk: Any = None) -> Any:
        """Flower's answer, unless this request's inspection found Redis unreachable: Flower
        then answers 200 with the workers it had (an inspector failure is no error to it)."""
        if self.get_status() < 400 and self._failed_here():
            chunk = self._unavailable(RedisUnavailable().log_message or "")
        return super().finish(chunk)

    def _failed_here(self) -> bool:
        """Whether this request reaches Redis and the outage is on (its own call failed,
        or another's: prepare let it through only while there was none)."""
        return self.reaches_redis() and self.emp.outage.down

    def _unavailable(self, reason: str) -> str:
        """Turn the answer into the 503 (with ``Retry-After``); its plain-text body."""
        self.clear()
        self.set_status(503)
        self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        return f"Redis is unreachable: {reason}\n"


def _gated(handler: type) -> bool:
    return (issubclass(handler, control.ControlHandler) or issubclass(handler, TASK_CALLS)
            or handler is WorkerView)


@functools.cache
def _gated_class(handler: type) -> type:
    return type(f"Gated{handler.__name__}", (FlowerGate, handler), {})


def gated_routes() -> list[Any]:
    """Flower's routes whose handlers reach Redis (its control and task API, ``/api/workers``
    with refresh, a worker's page), each with ``FlowerGate`` mixed in: put in front of
    Flower's own, so the same paths and names answer."""
    routes: list[Any] = []
    for route in flower_handlers:
        if isinstance(route, url):
            if _gated(route.handler_class):
                routes.append(url(route.regex.pattern, _gated_class(route.handler_class),
                                  route.kwargs, route.name))
        elif _gated(route[1]):
            routes.append((route[0], _gated_class(route[1]), *route[2:]))
    return routes


def install(app: Any, state: MonitorState) -> None:
    """Give Flower's application (``app``) the gated runner and inspector."""
    app.blocking_runner = GatedRunner(app.executor, state)
    app.inspector = GatedInspector(app.io_loop, app.capp, app.options.inspect_timeout / 1000.0,
                                   state)

