"""Wakes idle dispatcher threads: as many as there is new work for, not all of them.

A shared ``threading.Event`` woke every idle dispatcher for each batch that
filed a delivery, and each woken thread asked Redis for a hook: with 8
dispatchers, a delivery cost up to 8 claims, 7 of them finding nothing.
Here the consumer says how many hooks got new deliveries, and that many
threads wake. Wake-ups given while no thread waits are kept (up to the
number of threads), so a thread that was busy when the work was filed takes
it on its next wait instead of sleeping through it.
"""

from __future__ import annotations

import threading


class Wakeup:
    """Counted wake-ups for ``threads`` waiting threads.

    :param threads: the most wake-ups kept for threads not yet waiting.
    """

    def __init__(self, threads: int) -> None:
        self._threads = max(1, threads)
        self._cond = threading.Condition()
        self._pending = 0
        self._everyone = False

    def notify(self, count: int = 1) -> None:
        """Wake ``count`` waiting threads (or the next ones to wait)."""
        if count <= 0:
            return
        with self._cond:
            self._pending = min(self._threads, self._pending + count)
            self._cond.notify(count)

    def notify_all(self) -> None:
        """Wake every thread, now and at every later wait (shutting down)."""
        with self._cond:
            self._everyone = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken rather than timed out."""
        with self._cond:
            if not self._pending and not self._everyone:
                self._cond.wait(timeout)
            if self._pending:
                self._pending -= 1
                return True
            return self._everyone
