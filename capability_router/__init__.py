"""Capability matching in Redis Functions, and the kombu transport and Celery
router that put Celery tasks through it."""

from capability_router.errors import (
    EmpError,
    InvalidJob,
    InvalidProfile,
    JobCancelled,
    JobNotFound,
    LibraryError,
    RetryRefused,
)
from capability_router.jobspec import JobSpec
from capability_router.keys import DEFAULT_NAMESPACE, Keys, key_for
from capability_router.profile import WorkerProfile
from capability_router.states import JobEvent, JobStatus

TRANSPORT = "capability_router.transport:Transport"

__all__ = [
    "DEFAULT_NAMESPACE", "EmpError", "InvalidJob", "InvalidProfile", "JobCancelled", "JobEvent",
    "JobNotFound", "JobSpec", "JobStatus", "Keys", "LibraryError", "RetryRefused", "TRANSPORT",
    "WorkerProfile", "key_for",
]
