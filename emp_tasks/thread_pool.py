"""Celery's thread pool, where ``revoke(terminate=True)`` stops a job instead of erroring.

A thread cannot be killed, so Celery's thread pool answers a terminate with
NotImplementedError: the revoke failed with a traceback in the worker log and
the job ran on, ``in_progress``. Here the terminate kills nothing; Celery then
announces the task revoked, which cancels the job (``emp_tasks.revocation``),
and the run stops at its next progress report or cancel check (a connector
job within a second: ``emp_tasks.cancel_watch``), ending REVOKED.
Celery's thread pool also ignores a hard time limit (``time_limit``, the task's or
the call's) without a word: a job ran past it and ended ``completed``. Here a timer
reports the limit as the prefork pool does (``Request.on_timeout``): the job fails
with TimeLimitExceeded (``emp_tasks.hard_time_limit``) and Celery stores that
FAILURE; the thread, which cannot be killed, runs on to its end and records nothing
(its outcome is refused). One thread per pool keeps every run's limit
(``emp_tasks.deadlines``), not a Timer thread per run. A soft limit is still
ignored: nothing can raise in a thread.
Celery gives each thread a result backend of its own (``result_backend_thread_safe``
off), each with its own Redis client: a 550-thread worker held ~900 connections and
~10 MB more. Its Redis backend is safe to share (a client over one connection pool),
so this pool shares one, unless the app's configuration sets that option itself.
``install`` makes this the pool ``-P threads`` names, for ``emp worker`` and
``celery -A emp_tasks.app worker`` alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from celery import concurrency
from celery.concurrency import thread

from emp_tasks.deadlines import Deadlines

logger = logging.getLogger(__name__)


class _StoppableResult(thread.ApplyResult):
    """An applied job whose ``terminate`` (Celery calls it after a revoke) does nothing:
    the cancel stops the run."""

    def terminate(self, signal: Any = None) -> None:
        """Nothing to kill: the job's cancel stops its run."""


class TaskPool(thread.TaskPool):
    """``-P threads`` for EMP workers (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadlines = Deadlines()
        if self.app is not None and self.app.conf.get("result_backend_thread_safe") is None:
            self.app.conf.result_backend_thread_safe = True  # before the first run's backend

    def on_stop(self) -> None:
        super().on_stop()  # waits for the runs: a limit reached meanwhile still counts
        self.deadlines.stop()

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        logger.info("revoke(terminate=True) under -P threads: the job is cancelled and its "
                    "run stops at its next progress report or cancel check")

    def on_apply(self, *args: Any, timeout: float | None = None,
                 timeout_callback: Callable[[bool, float], Any] | None = None,
                 **kwargs: Any) -> _StoppableResult:
        result = _StoppableResult(super().on_apply(*args, **kwargs).f)
        if timeout and timeout_callback is not None:
            run = result.f
            ticket = self.deadlines.call_after(
                timeout, lambda: _time_limit_reached(run, timeout_callback, timeout))
            run.add_done_callback(lambda _: self.deadlines.drop(ticket))
        return result


def _time_limit_reached(run: Future, timeout_callback: Callable[[bool, float], Any],
                        timeout: float) -> None:
    """A run still going at its hard limit: Celery's timeout handling, as under prefork."""
    if not run.done():
        timeout_callback(False, timeout)


def install() -> None:
    """Make ``-P threads`` name this pool in this process (idempotent)."""
    concurrency.ALIASES["threads"] = f"{__name__}:TaskPool"
