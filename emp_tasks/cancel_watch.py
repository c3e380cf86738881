"""One thread per worker process watches every job it runs for cancellation.

A job that reports nothing for a while (a model loading, one long sampler
step) must still learn that it was cancelled, so the connector can stop the
service's work. A watcher thread per job did that with one HMGET a second
each: a thread-pool worker running 500 jobs held 500 more threads and sent
500 reads a second. Here one thread reads every watched job's status in one
pipelined round trip a second (per Redis client), and hands each cancelled
job's callback to a short-lived thread, so a slow ``cancel_job`` (an HTTP
call to ComfyUI) holds up no other job's check.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from emp_tasks.cancellation import stops_attempt
from emp_tasks.context import JobContext

logger = logging.getLogger(__name__)

#: Seconds between two checks of the watched jobs.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class _Watched:
    context: JobContext
    on_cancel: Callable[[], object]


class CancelWatch:
    """The jobs one process runs, checked together every ``interval`` seconds."""

    def __init__(self, interval: float = POLL_SECONDS) -> None:
        self.interval = interval
        self._jobs: dict[int, _Watched] = {}
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pid: int | None = None

    @contextmanager
    def watching(self, context: JobContext, on_cancel: Callable[[], object]) -> Iterator[None]:
        """Call ``on_cancel`` (once, on another thread) if the job is cancelled or taken
        from this attempt while the block runs."""
        with self._lock:
            self._start_if_needed()
            ticket = next(self._tickets)
            self._jobs[ticket] = _Watched(context, on_cancel)
            self._wake.notify()
        try:
            yield
        finally:
            with self._lock:
                self._jobs.pop(ticket, None)

    def _start_if_needed(self) -> None:
        if self._pid == os.getpid():
            return
        # First job in this process (a prefork child starts with the parent's state).
        self._pid, self._jobs = os.getpid(), {}
        threading.Thread(target=self._run, name="emp-cancel-watch", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._wake.wait()
            time.sleep(self.interval)
            try:
                self._check()
            except (redis.RedisError, OSError) as exc:  # the next round, or a progress call
                logger.debug("cancellation check failed: %s", exc)
            except Exception:  # never let one bad round end the watch of every job
                logger.exception("cancellation check failed")

    def _check(self) -> None:
        with self._lock:
            jobs = dict(self._jobs)
        for ticket in self.cancelled(jobs):
            with self._lock:
                watched = self._jobs.pop(ticket, None)
            if watched is not None:
                threading.Thread(target=watched.on_cancel, daemon=True,
                                 name=f"cancel-{watched.context.job_id}").start()

    @staticmethod
    def cancelled(jobs: dict[int, _Watched]) -> list[int]:
        """Tickets of the jobs that were cancelled or taken from their attempt."""
        by_client: dict[int, list[int]] = {}
        for ticket, watched in jobs.items():
            by_client.setdefault(id(watched.context.functions.client), []).append(ticket)
        found = []
        for tickets in by_client.values():
            client = jobs[tickets[0]].context.functions.client
            with client.pipeline(transaction=False) as pipe:
                for ticket in tickets:
                    context = jobs[ticket].context
                    pipe.hmget(context.functions.keys.job(context.job_id), "status", "attempts")
                replies = pipe.execute()
            found += [ticket for ticket, (status, attempts) in zip(tickets, replies, strict=True)
                      if stops_attempt(jobs[ticket].context, status, attempts)]
        return found


#: This process's watcher.
WATCH = CancelWatch()
