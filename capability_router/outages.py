"""Redis outages said once per process: one line when one starts, one when it ends.

A process meets an outage in every thread that reaches Redis (request handlers,
delivery loops, a reaper, a lease keeper), each retrying; a warning per thread
per retry (26 lines in 20 s from the webhook service alone) buried the one fact
that matters. The threads of a process share one of these, so the fact is said
once, and its end once.

A call that was already waiting when the outage ended is no news: a hung Redis
that is continued answers its backlog in order, and a call whose socket timeout
ran out in those milliseconds fails after another thread's call has ended the
outage. Such a timeout (one that arrives less than a socket timeout after the
end) does not start a new outage; before, it made a second "unreachable" line
and a second "reachable again" for one outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import redis

from capability_router.cluster import SOCKET_TIMEOUT_SECONDS

#: Errors that mean Redis cannot be reached or did not answer in time (not a refused
#: command). ``BusyLoadingError`` (a restarted Redis loading its data) is one.
UNREACHABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)


def describe(exc: BaseException) -> str:
    """``TimeoutError: Timeout reading from socket``: what an outage line says of it."""
    return f"{type(exc).__name__}: {exc}"


class OutageLog:
    """Whether Redis was last found unreachable, shared by a process's threads; logs
    the change from reachable to not, and back, once each.

    :param log: the logger to write to.
    :param started: the line of an outage's start, with one ``%s`` for the failure.
    :param ended: the line of its end.
    :param level: the level of the start's line (the end's is a warning).
    :param timeout_seconds: the shortest socket timeout of the process's clients: a
        ``TimeoutError`` less than this after an outage's end began waiting before it.
    """

    def __init__(self, log: logging.Logger, started: str, ended: str,
                 level: int = logging.WARNING,
                 timeout_seconds: float = SOCKET_TIMEOUT_SECONDS) -> None:
        self.log, self.started, self.ended, self.level = log, started, ended, level
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._down = False
        #: When the last outage ended (monotonic), or None.
        self._ended_at: float | None = None

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, exc: BaseException) -> None:
        """A call failed for want of Redis: log it if this starts an outage; a timeout
        that began before the last outage ended changes nothing."""
        with self._lock:
            if not self._down and self._stale(exc):
                return
            started, self._down = not self._down, True
        if started:
            self.log.log(self.level, self.started, describe(exc))

    def succeeded(self) -> None:
        """A call reached Redis: log it if this ends an outage (cheap when there is none)."""
        if not self._down:
            return
        with self._lock:
            ended, self._down = self._down, False
            if ended:
                self._ended_at = time.monotonic()
        if ended:
            self.log.warning(self.ended)

    def _stale(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a timeout whose wait began before the last outage ended."""
        return (self._ended_at is not None and timed_out(exc)
                and time.monotonic() - self._ended_at < self.timeout_seconds)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (kombu's OperationalError wraps redis-py's errors), at
    most 8 deep: a chain of causes, never a cycle."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


#: A Redis that is up and refuses writes: at maxmemory (noeviction), or a read-only replica.
REFUSED_WRITES = (redis.OutOfMemoryError, redis.ReadOnlyError)


def refused_write(exc: BaseException) -> redis.ResponseError | None:
    """The refused write (``REFUSED_WRITES``) among ``exc``'s causes, if any. kombu's
    OperationalError wraps a refused publish: that is no outage, Redis is up (it was
    logged as "Redis unreachable", then "reachable again" at the next write)."""
    return next((seen for seen in causes(exc) if isinstance(seen, REFUSED_WRITES)), None)


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc``, or what it wraps, is a socket timeout."""
    return any(isinstance(seen, (redis.TimeoutError, TimeoutError)) for seen in causes(exc))


class RenewalLog:
    """How a worker process's lease renewals fare, said when that changes: once when
    Redis is unreachable (until they work again), once per distinct refusal (out of
    memory, read-only), once when they are accepted again.

    Shared by the transport (which renews from the worker's event loop) and the solo
    pool's lease keeper (``emp_tasks.lease_keeper``), so one outage is one line
    whichever of them meets it.
    """

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._lock = threading.Lock()
        #: Why the last renewal failed, or None when it was accepted.
        self.failure: str | None = None

    def unreachable(self, exc: BaseException) -> None:
        """Redis could not be reached (down, or no answer within the socket timeout)."""
        text = f"Redis unreachable ({describe(exc)})"
        with self._lock:
            first, self.failure = self.failure is None, self.failure or text
        if first:
            self.log.warning("lease renewal failed: %s (renewing again every period; leases "
                             "not renewed in time run out)", text)

    def refused(self, text: str) -> None:
        """Redis refused a renewal (at maxmemory, a read-only replica): the leases run out
        meanwhile; fencing then refuses the runs' late outcomes, and the jobs run again
        elsewhere."""
        with self._lock:
            new, self.failure = text != self.failure, text
        if new:
            self.log.error("lease renewal refused: %s (renewing again every period until "
                           "Redis accepts; leases not renewed in time run out)", text)

    def accepted(self) -> None:
        """A renewal went through: say so if it ends a run of failures."""
        if self.failure is None:
            return
        with self._lock:
            after, self.failure = self.failure, None
        if after is not None:
            self.log.warning("lease renewals accepted again (after: %s)", after)
