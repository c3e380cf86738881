"""One thread that calls a function at each of many deadlines, for ``-P threads``.

A ``threading.Timer`` per run with a hard time limit held one OS thread per
running job (a ``-c 300`` worker, 300 threads more). Here a heap of deadlines,
guarded by a Condition, is kept by one daemon thread, started at the first
deadline and ended by ``stop``. A deadline dropped before it comes (its run
ended) releases what it holds at once; the heap's stale entry is only a number.
Celery's thread pool offers no timer of its own (its worker timer belongs to the
event loop, which the pool never sees).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Deadlines:
    """Deadlines of one pool; their calls run one after another on its one thread."""

    def __init__(self, name: str = "emp-deadlines") -> None:
        self.name = name
        self.thread: threading.Thread | None = None
        self._heap: list[tuple[float, int]] = []
        self._calls: dict[int, Callable[[], object]] = {}
        self._tickets = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False

    def call_after(self, seconds: float, call: Callable[[], object]) -> int:
        """Call ``call()`` in ``seconds`` unless ``drop`` is given the ticket first."""
        with self._wake:
            if self._stopped:
                raise RuntimeError("deadlines stopped")
            ticket = next(self._tickets)
            self._calls[ticket] = call
            heapq.heappush(self._heap, (time.monotonic() + seconds, ticket))
            if len(self._heap) > 2 * len(self._calls) + 64:  # mostly dropped: compact
                self._heap = [e for e in self._heap if e[1] in self._calls]
                heapq.heapify(self._heap)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
            self._wake.notify()
        return ticket

    def drop(self, ticket: int) -> None:
        """Forget a deadline (nothing if it already came)."""
        with self._wake:
            self._calls.pop(ticket, None)

    def pending(self) -> int:
        """Deadlines still to come."""
        with self._wake:
            return len(self._calls)

    def stop(self) -> None:
        """End the thread; deadlines still to come are never called."""
        with self._wake:
            self._stopped = True
            self._calls.clear()
            self._heap.clear()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                call = self._next_due()
                if call is None:
                    return
            try:
                call()
            except Exception:  # a Timer thread would print it and end; keep the others
                logger.exception("a deadline's call failed")

    def _next_due(self) -> Callable[[], object] | None:
        """Wait (lock held) for the next deadline that was not dropped; None once stopped."""
        while not self._stopped:
            if not self._heap:
                self._wake.wait()
                continue
            due, ticket = self._heap[0]
            if ticket not in self._calls:
                heapq.heappop(self._heap)
                continue
            delay = due - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
                continue
            heapq.heappop(self._heap)
            return self._calls.pop(ticket)
        return None
