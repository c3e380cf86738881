"""Cooperative cancellation: a running task asks whether its job was cancelled,
and a run that learns it ends the way Celery ends a revoked task."""

from __future__ import annotations

from billiard.exceptions import Terminated
from celery import Celery
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from capability_router.errors import JobCancelled
from capability_router.states import JobStatus
from emp_tasks.context import JobContext

logger = get_task_logger(__name__)


class RunCancelled(Ignore, Terminated):
    """Ends the run of a job the user cancelled.

    As an ``Ignore``, the pool process stores nothing and logs no error. As a
    ``Terminated``, the worker's ``Request.on_failure`` takes Celery's own
    revoke path: result state REVOKED, a ``task-revoked`` event (so Flower
    shows REVOKED, not FAILURE) and the ``task_revoked`` signal.
    """


def is_cancelled(context: JobContext | None) -> bool:
    """True once the job was cancelled (or taken from this attempt)."""
    if context is None:
        return False
    status, attempts = context.functions.client.hmget(
        context.functions.keys.job(context.job_id), "status", "attempts"
    )
    return stops_attempt(context, status, attempts)


def stops_attempt(context: JobContext, status: str | None, attempts: str | None) -> bool:
    """Whether a record's ``status`` and ``attempts`` say this attempt must stop."""
    return status == JobStatus.CANCELLED or (
        attempts is not None and int(attempts) != context.attempt
    )


def check_cancelled(context: JobContext | None) -> None:
    """Raise JobCancelled when the job was cancelled; call it between steps."""
    if is_cancelled(context):
        raise JobCancelled(context.job_id if context else "")


def recorded_already(context: JobContext, refused: str, status: str,
                     error: str | None = None) -> bool:
    """Whether an outcome the record refused with ``refused`` is this run's own, recorded
    by the same call already: Redis ran it, the reply was lost (a connection cut) and
    the client sent it again, which the fence refuses as the job is no longer active.

    Only this attempt can end the job ``completed`` while the record's attempt is this
    one (``failed`` with this very error: the queue also fails jobs that used up their
    attempts). Taken for a refusal, the run stored nothing in the result backend and
    ``AsyncResult.get()`` waited for ever on a job its record said had ended.
    """
    if refused != status:
        return False
    record, attempts, last_error = context.functions.client.hmget(
        context.functions.keys.job(context.job_id), "status", "attempts", "last_error")
    return (record == status and attempts == str(context.attempt)
            and (error is None or last_error == error))


def record_lost(context: JobContext, refused: str) -> bool:
    """Whether an outcome was refused because the job's record is gone (``missing``),
    logged as an ERROR: a Redis restarted without persistence, or one evicting keys
    (an evicting ``maxmemory-policy``). The run ended; its caller still waits on the
    result backend, so the outcome goes there (it stored nothing: ``AsyncResult.get()``
    waited for ever on a job that had run to the end)."""
    if refused != "missing":
        return False
    logger.error("job %s attempt %s: its record is gone from Redis (restarted without "
                 "persistence, or keys evicted: see maxmemory-policy); this run's outcome "
                 "goes to the result backend only", context.job_id, context.attempt)
    return True


def end_cancelled_run(context: JobContext) -> Ignore:
    """The exception that ends a run which raised JobCancelled, or whose outcome the
    job record refused, logged at INFO.

    RunCancelled when the user cancelled the job. A run whose attempt was
    taken away (the job runs again elsewhere under the same task id) ends as
    a plain ``Ignore``: revoking would mark the other run's task REVOKED.
    """
    status = context.functions.client.hget(
        context.functions.keys.job(context.job_id), "status")
    if status == JobStatus.CANCELLED:
        logger.info("job %s was cancelled; its run stops here", context.job_id)
        return RunCancelled(f"job {context.job_id} was cancelled")
    logger.info("job %s attempt %s was taken from this run (now %s); it stops here",
                context.job_id, context.attempt, status)
    return Ignore(f"job {context.job_id} attempt {context.attempt} was taken away")


def revoke_unclaimed(app: Celery, job_id: str, namespace: str) -> None:
    """Mark a job cancelled while no run held it (pending, or waiting for a retry)
    REVOKED in Celery's result backend, as a worker's revoke would.

    No worker will see its message again, so none takes Celery's revoke path
    for it; without this its AsyncResult stayed PENDING (or RETRY) and
    ``get()`` waited for ever. No task-revoked event is sent: Celery's event
    state files a task event under its sender as a worker, so Flower would
    list this process among the workers. Stored with the request its message
    holds, as a worker would: a chord member's part is counted (the chord's
    body fails with ``ChordError`` as Celery's revoke makes it).
    """
    from emp_tasks.stored_request import stored_request

    app.backend.mark_as_revoked(job_id, "cancelled",
                                request=stored_request(app, namespace, job_id))


def revoke_unstarted(app: Celery, job_id: str, namespace: str) -> None:
    """Mark a job cancelled after its claim, before its run started, REVOKED now, and
    have its worker drop the run as Celery drops a revoked task.

    Such a job may wait in its worker's rate-limit bucket (a task's ``rate_limit``)
    for as long as the limit says; its AsyncResult stayed PENDING (``get()`` waited)
    until the bucket let it go. Stored with the request, as ``revoke_unclaimed`` stores
    it, so a chord member's part is counted now: left to the worker's own revoke path
    (which meets the request only when the bucket lets it go), it was never counted
    when that worker stopped or died first, and the chord's body stayed PENDING for
    good. A worker still running stores it again with the request; Celery's chord
    script counts a part once, so that second report changes nothing.
    """
    revoke_unclaimed(app, job_id, namespace)
    app.control.revoke(job_id)
