"""Whole-attempt deadlines for webhook posts: one watchdog thread per sender.

urllib3's timeouts bound each socket operation, not an attempt: a receiver that
trickles its status line, header lines or body a byte at a time keeps one attempt
(and the dispatcher thread under it) going as long as it likes. The sender's
connections bind themselves to the calling thread's attempt as they connect and
send (``WatchedHTTPConnection``); past the attempt's deadline the watchdog shuts
the connection's socket down, so whatever read or write is under way ends at once.
One thread serves every attempt (a timer thread per attempt cost a thread start per
delivery).
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection


class Attempt:
    """One attempt's deadline and the connection it is using."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.done = False
        #: The last request went out on a kept-alive connection that had served one before.
        self.reused = False
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()

    def bind(self, connection: HTTPConnection) -> None:
        """Watch ``connection``; shut it at once if the deadline already passed."""
        with self._lock:
            self._connection = connection
            late = self.expired
        if late:
            _shut(connection)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            connection = self._connection
        if connection is not None:
            _shut(connection)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._connection = None


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass


_current = threading.local()


class Deadlines:
    """Expires attempts at their deadlines, from one daemon thread started on first use."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Attempt]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def attempt(self, seconds: float) -> Iterator[Attempt]:
        """The calling thread's connections are bound to an attempt ending in ``seconds``."""
        attempt = Attempt(time.monotonic() + seconds)
        with self._wake:
            heapq.heappush(self._heap, (attempt.deadline, next(self._order), attempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="webhook-deadlines",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()
        _current.attempt = attempt
        try:
            yield attempt
        finally:
            _current.attempt = None
            attempt.finish()

    def close(self) -> None:
        """End the watchdog thread (a later attempt starts a new one)."""
        with self._wake:
            self._thread = None
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._thread is not threading.current_thread():
                    return  # closed
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                timeout = (self._heap[0][0] - time.monotonic()) if self._heap else None
                if timeout is None or timeout > 0:
                    self._wake.wait(timeout)
                    continue
                attempt = heapq.heappop(self._heap)[2]
            attempt.expire()


def _bind_current(connection: HTTPConnection) -> None:
    attempt: Attempt | None = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.bind(connection)


def _note_request(connection: HTTPConnection) -> None:
    """Bind a request's connection to the attempt and note whether it served one before."""
    _bind_current(connection)  # a reused connection: this attempt's now
    sent = getattr(connection, "_emp_requests", 0)
    attempt: Attempt | None = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.reused = sent > 0 and connection.sock is not None
    connection._emp_requests = sent + 1  # type: ignore[attr-defined]


class WatchedHTTPConnection(HTTPConnection):
    """An HTTP connection that the calling thread's attempt can shut down."""

    def connect(self) -> None:
        _bind_current(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _note_request(self)
        super().request(*args, **kwargs)


class WatchedHTTPSConnection(HTTPSConnection):
    """The TLS form of ``WatchedHTTPConnection`` (bound before the handshake)."""

    def connect(self) -> None:
        _bind_current(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _note_request(self)
        super().request(*args, **kwargs)
