"""Redis unreachable: one short 503 per request, one log line per outage.

Every web service reaches Redis for nearly every request; when it is down,
a traceback per request buries the one fact that matters. ``Outage`` keeps
that fact: the first failure logs "Redis unreachable", later ones log
nothing, and the first success after it logs "Redis reachable again".
Requests get ``503`` with ``Retry-After``.

A Redis that answers but refuses writes (at ``maxmemory`` with the
``noeviction`` policy, or a read-only replica during a failover) is the same
for a client: nothing was written and a retry later works. Those requests get
a ``503`` that says why, logged at most once a minute.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

#: Errors that mean Redis cannot be reached (not a refused command): kombu wraps the
#: publish path's connection errors in OperationalError. (Python's own ConnectionError
#: is left out: a client hanging up raises it too, and that is no outage.)
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, OperationalError)
#: Seconds a client is told to wait before trying again (``Retry-After``).
RETRY_AFTER_SECONDS = 5
#: The reason every 503 gives.
REASON = "redis unavailable; try again shortly"
#: Refused writes of a Redis that is up, and the reason their 503 gives.
REFUSING: dict[type[redis.ResponseError], str] = {
    redis.OutOfMemoryError: "redis is out of memory (maxmemory reached); try again shortly",
    redis.ReadOnlyError: "redis is read-only (a replica); try again shortly",
}
#: Seconds between two log lines about refused writes.
REFUSAL_LOG_SECONDS = 60.0


class Outage:
    """Whether this process last found Redis unreachable; logs each change once."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._down = False

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, exc: BaseException) -> None:
        """A call failed for want of Redis: log it if this starts an outage."""
        with self._lock:
            started, self._down = not self._down, True
        if started:
            logger.error("%s: Redis unreachable (%s: %s); answering 503 until it is back",
                         self.service, type(exc).__name__, exc)

    def succeeded(self) -> None:
        """A call reached Redis: log it if this ends an outage."""
        if not self._down:
            return
        with self._lock:
            ended, self._down = self._down, False
        if ended:
            logger.warning("%s: Redis reachable again", self.service)

    def check(self, client: redis.Redis) -> None:
        """During an outage, ping once to notice that it ended (failures stay quiet)."""
        if not self._down:
            return
        try:
            client.ping()
        except UNAVAILABLE:
            return
        self.succeeded()


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

    def refused(self, exc: redis.ResponseError) -> Response:
        """Log ``exc`` (``note``); the 503 that says why."""
        self.note(exc)
        return unavailable_response(reason_of(exc))


def reason_of(exc: BaseException) -> str:
    """What a 503 says for ``exc``: Redis unreachable, or why it refuses writes (also
    under kombu's OperationalError, which wraps a refused publish)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes, never a cycle
        if seen is None:
            break
        for kind, text in REFUSING.items():
            if isinstance(seen, kind):
                return text
        seen = seen.__cause__ or seen.__context__
    return REASON


def init_flask(app: Flask, client: redis.Redis, service: str) -> Outage:
    """Answer 503 (with ``Retry-After``) to any request that could not reach Redis, and
    notice the end of an outage at the first request after it."""
    outage = app.extensions["emp_outage"] = Outage(service)

    def unavailable(exc: BaseException) -> Response:
        outage.failed(exc)
        return unavailable_response(reason_of(exc))

    for kind in UNAVAILABLE:
        app.register_error_handler(kind, unavailable)
    refusals = WriteRefusals(service)
    for kind in REFUSING:
        app.register_error_handler(kind, refusals.refused)
    app.before_request(lambda: outage.check(client))
    return outage


def unavailable_response(reason: str = REASON) -> Response:
    """The 503 every Flask route answers while Redis is down (or refuses writes)."""
    response = jsonify(success=False, error=reason)
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
