"""Job states and event names, shared by Redis, the API, the CLI and the monitor.

The Lua library writes the same strings; these enums are the Python names.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """States of a job record (the original's enum, ``timeout``/``unworkable`` kept)."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    UNWORKABLE = "unworkable"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_active(self) -> bool:
        return self in (JobStatus.ASSIGNED, JobStatus.IN_PROGRESS)


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class WorkerStatus(StrEnum):
    """The ``status`` of a worker's registry record."""

    IDLE = "idle"
    BUSY = "busy"
    #: Its service is down or restarting: it claims nothing until the service answers.
    SERVICE_UNHEALTHY = "service_unhealthy"


class JobEvent(StrEnum):
    """Event types appended to the event streams."""

    SUBMITTED = "job_submitted"
    ASSIGNED = "job_assigned"
    STARTED = "job_started"
    PROGRESS = "update_job_progress"
    COMPLETED = "complete_job"
    FAILED = "job_failed"
    RETRYING = "job_retrying"
    REQUEUED = "job_requeued"
    #: Given back because its service refused it before it ran, or its worker never
    #: received the claim (reply lost): no retry or attempt spent.
    RELEASED = "job_released"
    CANCELLED = "job_cancelled"
    #: An assigned job's worker is getting its models ready (a cold start).
    PREPARING = "job_preparing"
    #: Ran out of GPU memory: filed again asking for more (``escalations``).
    ESCALATED = "job_escalated"
    #: Its task replaced itself (Celery's ``Task.replace``): pending again, running the
    #: replacement's task under the same id (``replaced``).
    REPLACED = "job_replaced"


#: The status a terminal event leaves a job in.
TERMINAL_EVENTS = {
    JobEvent.COMPLETED: JobStatus.COMPLETED,
    JobEvent.FAILED: JobStatus.FAILED,
    JobEvent.CANCELLED: JobStatus.CANCELLED,
}
