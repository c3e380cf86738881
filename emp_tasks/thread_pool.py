"""Celery's thread pool, where ``revoke(terminate=True)`` stops a job instead of erroring.

A thread cannot be killed, so Celery's thread pool answers a terminate with
NotImplementedError: the revoke failed with a traceback in the worker log and
the job ran on, ``in_progress``. Here the terminate kills nothing; Celery then
announces the task revoked, which cancels the job (``emp_tasks.revocation``),
and the run stops at its next progress report or cancel check (a connector
job within a second: ``emp_tasks.cancel_watch``), ending REVOKED.
``install`` makes this the pool ``-P threads`` names, for ``emp worker`` and
``celery -A emp_tasks.app worker`` alike.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import concurrency
from celery.concurrency import thread

logger = logging.getLogger(__name__)


class _StoppableResult(thread.ApplyResult):
    """An applied job whose ``terminate`` (Celery calls it after a revoke) does nothing:
    the cancel stops the run."""

    def terminate(self, signal: Any = None) -> None:
        """Nothing to kill: the job's cancel stops its run."""


class TaskPool(thread.TaskPool):
    """``-P threads`` for EMP workers (see the module docstring)."""

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        logger.info("revoke(terminate=True) under -P threads: the job is cancelled and its "
                    "run stops at its next progress report or cancel check")

    def on_apply(self, *args: Any, **kwargs: Any) -> _StoppableResult:
        return _StoppableResult(super().on_apply(*args, **kwargs).f)


def install() -> None:
    """Make ``-P threads`` name this pool in this process (idempotent)."""
    concurrency.ALIASES["threads"] = f"{__name__}:TaskPool"
