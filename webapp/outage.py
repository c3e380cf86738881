"""Redis unreachable: one short 503 per request, one log line per outage.

Every web service reaches Redis for nearly every request; when it is down,
a traceback per request buries the one fact that matters. ``Outage`` keeps
that fact: the first failure logs "Redis unreachable", later ones log
nothing, and the first success after it logs "Redis reachable again".
Requests get ``503`` with ``Retry-After``. A process's background threads
(the API's machine reaper, the webhook service's delivery threads) share its
``Outage``, so the whole process says each outage once.

While an outage lasts, a request costs at most one socket timeout: one
request at a time probes Redis with a ping, the others get their 503 at once
(``Outage.check``; the monitor's handlers use the same ``Outage.probing``);
the probe that answers ends the outage. After a probe that waited out a hung
Redis's timeout, none for ``Retry-After`` seconds.

A Redis that answers but refuses writes (at ``maxmemory`` with the
``noeviction`` policy, or a read-only replica during a failover) is the same
for a client: nothing was written and a retry later works. Those requests get
a ``503`` that says why, logged at most once a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from flask import Flask, Response, jsonify, request
from kombu.exceptions import OperationalError

from capability_router.cluster import SOCKET_TIMEOUT_SECONDS
from capability_router.outages import OutageLog, refused_write

logger = logging.getLogger(__name__)

V = TypeVar("V", bound=Callable[..., Any])

#: Errors that mean Redis cannot be reached (not a refused command): kombu wraps the
#: publish path's connection errors in OperationalError. (Python's own ConnectionError
#: is left out: a client hanging up raises it too, and that is no outage.)
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, OperationalError)
#: Seconds a client is told to wait before trying again (``Retry-After``).
RETRY_AFTER_SECONDS = 5
#: A call to Redis this slow that leaves the outage on met a hung Redis: no probe for
#: ``RETRY_AFTER_SECONDS`` after it (a refused connection fails at once and costs none).
#: 1 s, or half the socket timeout when ``EMP_REDIS_SOCKET_TIMEOUT`` is under 2 s: a call
#: that timed out must count as slow.
SLOW_PROBE_SECONDS = min(1.0, SOCKET_TIMEOUT_SECONDS / 2)
#: The reason every 503 gives.
REASON = "redis unavailable; try again shortly"
#: Refused writes of a Redis that is up, and the reason their 503 gives.
REFUSING: dict[type[redis.ResponseError], str] = {
    redis.OutOfMemoryError: "redis is out of memory (maxmemory reached); try again shortly",
    redis.ReadOnlyError: "redis is read-only (a replica); try again shortly",
}
#: Seconds between two log lines about refused writes.
REFUSAL_LOG_SECONDS = 60.0


class Outage(OutageLog):
    """Whether this process last found Redis unreachable; logs each change once, and
    gates requests while it lasts (``check``).

    :param service: the process's name in its lines (``emp api``).
    :param while_down: what the process does meanwhile, said in the outage's line.
    """

    def __init__(self, service: str, while_down: str = "answering 503 until it is back") -> None:
        super().__init__(logger, f"{service}: Redis unreachable (%s); {while_down}",
                         f"{service}: Redis reachable again", level=logging.ERROR)
        self.service = service
        self._probe = threading.Lock()
        #: No probe before this (monotonic): a hung Redis's probe just took a timeout.
        self._quiet_until = 0.0

    def check(self, client: redis.Redis) -> Response | None:
        """During an outage, let one request at a time probe Redis (one ping: at most one
        socket timeout) and answer the others 503 at once; the probe too when it fails.

        Before, every request pinged and then made its own call: against a hung Redis
        that was two socket timeouts (10 s) per request, and every request of a busy
        process waited on Redis at once. A refused connection fails the ping at once,
        so there each request still probes.
        """
        if not self._down:
            return None
        with self.probing() as admitted:
            if not admitted:
                return unavailable_response()
            try:
                client.ping()
            except UNAVAILABLE:
                return unavailable_response()
        self.succeeded()
        return None

    @contextmanager
    def probing(self) -> Iterator[bool]:
        """Whether the caller may reach Redis now: always while no outage is known;
        during one, only the one caller at a time that holds the probe (for the block),
        the others get False at once. Never waits, so an event loop can hold it across
        an ``await`` (the monitor's calls, whose own call is the probe).

        A call in the block that took a socket timeout and left the outage on (it found
        the outage, or was a probe that failed) holds the next probe back for
        ``RETRY_AFTER_SECONDS``: before, while Redis hung, each refresh of a page was the
        one probe of its moment and waited its own 5 s, one after the other."""
        if not self._down:
            started = time.monotonic()
            try:
                yield True
            finally:
                self._quiet_if_slow(started)
            return
        if time.monotonic() < self._quiet_until or not self._probe.acquire(blocking=False):
            yield False
            return
        started = time.monotonic()
        try:
            yield True
        finally:
            self._quiet_if_slow(started)
            self._probe.release()

    def _quiet_if_slow(self, started: float) -> None:
        now = time.monotonic()
        if self._down and now - started >= SLOW_PROBE_SECONDS:
            self._quiet_until = now + RETRY_AFTER_SECONDS


class WriteRefusals:
    """Writes Redis refused: one log line a minute, not a traceback per request."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._logged_at: float | None = None

    def note(self, exc: redis.ResponseError, doing: str = "answering 503") -> None:
        """Log ``exc`` unless a refusal was logged within the last minute."""
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_SECONDS:
            self._logged_at = now
            logger.error("%s: Redis refuses writes (%s: %s); %s (logged once a minute "
                         "while it lasts)", self.service, type(exc).__name__, exc, doing)


def log_failure(exc: BaseException, outage: Any, refusals: WriteRefusals,
                doing: str = "answering 503") -> str:
    """Log a failed call to Redis once, as what it is: refused writes (``refusals``), else
    an outage (``outage.failed``); the reason its 503 gives."""
    refusal = refused_write(exc)
    if refusal is not None:  # also a refused publish, in kombu's OperationalError
        refusals.note(refusal, doing)
    else:
        outage.failed(exc)
    return _reason(refusal)


def reason_of(exc: BaseException) -> str:
    """What a 503 says for ``exc``: Redis unreachable, or why it refuses writes (also
    under kombu's OperationalError, which wraps a refused publish)."""
    return _reason(refused_write(exc))


def _reason(refusal: BaseException | None) -> str:
    """A 503's reason for a refused write (``refused_write``), or for none: unreachable."""
    return REASON if refusal is None else next(
        text for kind, text in REFUSING.items() if isinstance(refusal, kind))


def ungated(view: V) -> V:
    """Mark a view the outage gate (``Outage.check``) lets through during an outage: it
    needs no Redis, or answers an outage itself (``/health``, whose own ping is then
    its one socket timeout)."""
    view.emp_ungated = True  # type: ignore[attr-defined]
    return view


def init_flask(app: Flask, client: redis.Redis, outage: Outage) -> Outage:
    """Answer 503 (with ``Retry-After``) to any request that could not reach Redis, and,
    while ``outage`` lasts, to any that would try (one probe at a time, ``Outage.check``):
    the gate runs before the app's other ``before_request`` hooks, some of which reach
    Redis (a socket handshake takes its place in the customer's limit)."""
    app.extensions["emp_outage"] = outage

    refusals = WriteRefusals(outage.service)

    def unavailable(exc: BaseException) -> Response:
        return unavailable_response(log_failure(exc, outage, refusals))

    def gate() -> Response | None:
        view = app.view_functions.get(request.endpoint or "")
        if view is None or getattr(view, "emp_ungated", False):
            return None  # no route (a 404 needs no Redis), or one that needs none
        return outage.check(client)

    for kind in (*UNAVAILABLE, *REFUSING):  # down, full or read-only: the 503 says which
        app.register_error_handler(kind, unavailable)
    app.before_request_funcs.setdefault(None, []).insert(0, gate)
    return outage


def unavailable_response(reason: str = REASON) -> Response:
    """The 503 every Flask route answers while Redis is down (or refuses writes)."""
    response = jsonify(success=False, error=reason)
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
