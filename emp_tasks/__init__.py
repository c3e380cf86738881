"""EMP job types on Celery: the app, the task base class and the producer API.

The producer API is imported on first use (PEP 562), not with the package: modules
read their settings from the environment when imported, and ``python -m
emp_tasks.cli`` imports this package before the command line can catch a
malformed one (``emp_command``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capability_router.errors import EmpError, InvalidJob, JobCancelled, JobNotFound
    from emp_tasks.producer import cancel, get_job, job_events, submit

#: Each name this package offers, and the module it comes from.
_EXPORTS = {
    "EmpError": "capability_router.errors", "InvalidJob": "capability_router.errors",
    "JobCancelled": "capability_router.errors", "JobNotFound": "capability_router.errors",
    "cancel": "emp_tasks.producer", "get_job": "emp_tasks.producer",
    "job_events": "emp_tasks.producer", "submit": "emp_tasks.producer",
}

__all__ = ["EmpError", "InvalidJob", "JobCancelled", "JobNotFound", "cancel", "get_job",
           "job_events", "submit"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(import_module(module), name)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
