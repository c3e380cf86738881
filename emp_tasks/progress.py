"""Progress reports from a running task: one event per call, on the event log."""

from __future__ import annotations

from typing import Any

from capability_router.errors import JobCancelled
from capability_router.states import JobStatus
from emp_tasks.context import JobContext


def report_progress(
    context: JobContext | None, percent: float, message: str | None = None, **details: Any
) -> None:
    """Record ``percent`` (0-100) and details; raises JobCancelled if the job was cancelled."""
    if context is None:
        return
    percent = max(0.0, min(100.0, float(percent)))
    if message is not None:
        details["message"] = message
    outcome = context.functions.progress(context.job_id, context.attempt, percent, details)
    if outcome == JobStatus.CANCELLED:
        raise JobCancelled(context.job_id)
