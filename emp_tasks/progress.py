"""Progress reports from a running task: one event per call, on the event log."""

from __future__ import annotations

import math
from typing import Any

from capability_router.errors import JobCancelled
from capability_router.states import JobStatus
from emp_tasks.context import JobContext


def report_progress(
    context: JobContext | None, percent: float, message: str | None = None, /, **details: Any
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


#: Celery's custom state for progress (its documentation's ``update_state`` example).
PROGRESS_STATE = "PROGRESS"


def percent_of_meta(meta: Any) -> float | None:
    """The percent a ``PROGRESS`` state's meta says: its ``percent``, else ``current``
    of ``total`` (Celery's documented example); None when it says neither."""
    if not isinstance(meta, dict):
        return None

    def number(name: str) -> float | None:
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    percent = number("percent")
    if percent is not None:
        return percent
    current, total = number("current"), number("total")
    if current is not None and total:
        return 100.0 * current / total
    return None
