"""Cooperative cancellation: a running task asks whether its job was cancelled."""

from __future__ import annotations

from capability_router.errors import JobCancelled
from capability_router.states import JobStatus
from emp_tasks.context import JobContext


def is_cancelled(context: JobContext | None) -> bool:
    """True once the job was cancelled (or taken from this attempt)."""
    if context is None:
        return False
    status, attempts = context.functions.client.hmget(
        context.functions.keys.job(context.job_id), "status", "attempts"
    )
    return status == JobStatus.CANCELLED or (
        attempts is not None and int(attempts) != context.attempt
    )


def check_cancelled(context: JobContext | None) -> None:
    """Raise JobCancelled when the job was cancelled; call it between steps."""
    if is_cancelled(context):
        raise JobCancelled(context.job_id if context else "")
