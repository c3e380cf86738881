"""Redis unreachable: one short 503 per request, one log line per outage.

Every web service reaches Redis for nearly every request; when it is down,
a traceback per request buries the one fact that matters. ``Outage`` keeps
that fact: the first failure logs "Redis unreachable", later ones log
nothing, and the first success after it logs "Redis reachable again".
Requests get ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import logging
import threading

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


def init_flask(app: Flask, client: redis.Redis, service: str) -> Outage:
    """Answer 503 (with ``Retry-After``) to any request that could not reach Redis, and
    notice the end of an outage at the first request after it."""
    outage = app.extensions["emp_outage"] = Outage(service)

    def unavailable(exc: BaseException) -> Response:
        outage.failed(exc)
        return unavailable_response()

    for kind in UNAVAILABLE:
        app.register_error_handler(kind, unavailable)
    app.before_request(lambda: outage.check(client))
    return outage


def unavailable_response() -> Response:
    """The 503 every Flask route answers while Redis is down."""
    response = jsonify(success=False, error=REASON)
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
