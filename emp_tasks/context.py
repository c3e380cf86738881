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
    """The job behind one task execution (None attempt: eager or foreign run)."""

    job_id: str
    attempt: int | None
    namespace: str
    functions: QueueFunctions

    @property
    def fenced(self) -> bool:
        """True when the run came from a claim and its writes are fenced."""
        return self.attempt is not None


def job_context(task: Any) -> JobContext | None:
    """The context of the task's current request, None outside a claimed job."""
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
