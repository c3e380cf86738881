"""Where a running task finds its job: id, attempt, pool and the functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capability_router.functions import QueueFunctions
from capability_router.jobspec import HEADER
from capability_router.keys import DEFAULT_NAMESPACE
from capability_router.transport import ATTEMPT_HEADER
from emp_tasks.connection import get_functions


@dataclass(frozen=True)
class JobContext:
    """The claimed job behind one task execution; its writes are fenced by ``attempt``."""

    job_id: str
    attempt: int
    namespace: str
    functions: QueueFunctions


def job_context(task: Any) -> JobContext | None:
    """The context of the task's current request; None when it was not claimed
    (run eagerly, or sent through another transport)."""
    request = task.request
    if request is None or request.id is None or getattr(request, "is_eager", False):
        return None
    attempt = getattr(request, ATTEMPT_HEADER, None)
    if attempt is None:
        return None
    spec = getattr(request, HEADER, None) or {}
    namespace = spec.get("pool") or DEFAULT_NAMESPACE
    functions = get_functions(task.app.conf.broker_url, namespace)
    return JobContext(request.id, int(attempt), namespace, functions)
