"""Celery's own stops (``expires``, ``revoke``, ``revoke(terminate=True)``) cancel the job.

A worker that discards an expired or revoked task, or kills a revoked run,
acknowledges its message without an outcome, which the ack would record as
a failure. Celery's ``task_revoked`` signal, sent by the worker's main
process right after that ack is buffered (acks reach Redis with the next
claim), cancels the job first, with the reason, so it ends ``cancelled``
with a ``job_cancelled`` event, as an EMP cancel does.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_revoked
from celery.utils.log import get_logger

from capability_router.jobspec import HEADER
from capability_router.keys import DEFAULT_NAMESPACE
from capability_router.transport import ATTEMPT_HEADER
from emp_tasks.connection import get_functions

logger = get_logger(__name__)


def revoke_reason(terminated: bool, expired: bool) -> str:
    """The job's ``last_error`` for a Celery stop."""
    if expired:
        return "expired before it ran (Celery expires)"
    if terminated:
        return "revoked and terminated by Celery's revoke(terminate=True)"
    return "revoked by Celery's revoke before it ran"


def cancel_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                   expired: bool = False, **_: Any) -> None:
    """``task_revoked`` receiver: cancel the claimed job the worker stopped.

    A job a user cancelled is terminal already (the cancel returns its
    status, changing nothing); a task not claimed through EMP is left alone.
    The cancel is fenced by the stopped run's attempt: a run a user cancelled
    ends through Celery's revoked path too, possibly after the job was
    resubmitted, and must not cancel the new run.
    """
    if request is None or getattr(request, ATTEMPT_HEADER, None) is None or sender is None:
        return
    namespace = (getattr(request, HEADER, None) or {}).get("pool") or DEFAULT_NAMESPACE
    try:
        get_functions(sender.app.conf.broker_url, namespace).cancel(
            request.id, revoke_reason(terminated, expired),
            attempt=getattr(request, ATTEMPT_HEADER))
    except Exception:  # noqa: BLE001 - a signal receiver must not break the worker
        logger.warning("could not cancel revoked job %s", request.id, exc_info=True)


def init_app(app: Celery) -> None:
    """Have the app's workers cancel the jobs Celery revokes (once per process)."""
    task_revoked.connect(cancel_revoked, weak=False, dispatch_uid="emp-cancel-revoked")
