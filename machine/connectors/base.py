"""The connector interface and the failure classes that decide retries.

A connector wraps one service (a ComfyUI instance, a remote ComfyUI, a
simulator). The worker's job task calls ``run_job`` (``process_job`` with the
lifecycle logged) with a progress callback; the connector reports what the
service really has through ``available_models`` so model requirements match
real models. ``cancel_job`` may be called from another thread while
``process_job`` runs; ``process_job`` then raises JobCancelledByService.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from capability_router.errors import EmpError, JobCancelled
from capability_router.prediction.directives import Directive
from capability_router.residency import Placement
from machine.connectors.events import log_event
from machine.counters import count_job


class ErrorType(StrEnum):
    """Failure classes of the original's connector logs (``service`` added)."""

    TIMEOUT = "timeout"
    MEMORY = "memory"
    NETWORK = "network"
    MODEL = "model"
    VALIDATION = "validation"
    SERVICE = "service"
    UNKNOWN = "unknown"

    @property
    def retryable(self) -> bool:
        """Whether running the job again may succeed (elsewhere or later)."""
        return self in (ErrorType.TIMEOUT, ErrorType.MEMORY, ErrorType.NETWORK,
                        ErrorType.SERVICE)


class ConnectorError(EmpError):
    """A job failed in a connector; ``error_type`` decides whether it retries.

    ``args`` are ``(message, error_type)`` so the error survives Celery's
    JSON exception round trip with its class intact; ``str()`` shows both.
    """

    def __init__(self, message: str, error_type: ErrorType | str = ErrorType.UNKNOWN,
                 details: dict[str, Any] | None = None) -> None:
        self.error_type = ErrorType(error_type)
        super().__init__(message, self.error_type.value)
        self.message = message
        self.details = details or {}

    @property
    def retryable(self) -> bool:
        return self.error_type.retryable

    def __str__(self) -> str:
        return f"[{self.error_type}] {self.message}"


class JobCancelledByService(ConnectorError):
    """The service stopped the job because it was cancelled (interrupt)."""


class ServiceUnavailable(ConnectorError):
    """The service refused the job before accepting it (down or restarting): nothing ran.

    Raised only when the job surely did not start on the service (its
    connection was refused), so the worker may give the job back without
    spending a retry (``emp_release``); anything later is a NETWORK error.
    """

    def __init__(self, message: str, error_type: ErrorType | str = ErrorType.NETWORK,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, error_type, details)


@dataclass
class Progress:
    """One progress report: percent plus where the service is."""

    percent: float
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]


@dataclass
class JobInput:
    """What a connector needs of a job."""

    job_id: str
    service: str
    payload: dict[str, Any]
    requirements: dict[str, Any] = field(default_factory=dict)
    ctx: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobOutput:
    """The original's result shape: ``{success, data, error, output_files, processing_time_ms}``."""

    success: bool
    data: Any = None
    error: str | None = None
    error_type: ErrorType | None = None
    output_files: list[dict[str, Any]] = field(default_factory=list)
    processing_time_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready result a job returns."""
        return {"success": self.success, "data": self.data, "error": self.error,
                "error_type": self.error_type, "output_files": self.output_files,
                "processing_time_ms": self.processing_time_ms}


@dataclass
class Health:
    """A health check's outcome plus what the service told about itself."""

    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DirectiveOutcome:
    """What a connector did with a placement directive."""

    applied: bool
    detail: str = ""
    #: Seconds the load took (a preload), 0 otherwise.
    seconds: float = 0.0


@dataclass(frozen=True)
class ClaimGate:
    """Whether a worker may claim jobs for its connector now; ``reason`` says why not."""

    open: bool
    reason: str = ""


class Connector(abc.ABC):
    """One service behind a worker."""

    #: Connector kind (``comfyui``, ``comfyui-remote``, ``simulation``).
    kind: str = ""
    #: The job service this connector serves (the worker's service name).
    service: str = ""
    #: Whether ``apply_directive`` acts: the worker follows its pool's directives only then.
    acts_on_directives: bool = False

    def __init__(self, connector_id: str) -> None:
        self.connector_id = connector_id

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Connector:
        """Build from a settings mapping (``make_connector``); keys are per connector."""
        raise NotImplementedError

    @abc.abstractmethod
    def initialize(self) -> None:
        """Connect and check the service is usable; raise ConnectorError if not."""

    @abc.abstractmethod
    def check_health(self) -> Health:
        """A cheap liveness check of the service."""

    @abc.abstractmethod
    def available_models(self) -> dict[str, list[str]]:
        """Models the service really has, ``{service: [model, ...]}``."""

    @abc.abstractmethod
    def process_job(self, job: JobInput, progress: ProgressCallback) -> JobOutput:
        """Run the job; raise ConnectorError (classified) on failure."""

    @abc.abstractmethod
    def cancel_job(self, job_id: str) -> bool:
        """Stop the job if it is running here; True when something was stopped."""

    def residency(self) -> dict[str, Placement]:
        """Where each model is: ``{model: Placement(tier)}`` (optional; {} reports nothing).

        The worker reports it after each job (``emp_tasks.residency_report``)."""
        return {}

    def apply_directive(self, directive: Directive) -> DirectiveOutcome:
        """Act on a placement directive (preload, evict, keep a model); optional hook.

        Called on the worker's directive thread while no job runs in the
        process (``emp_tasks.directives``); the worker reports ``residency``
        after it. The default declines.
        """
        return DirectiveOutcome(False, f"the {self.kind or 'connector'} connector does not act "
                                       "on placement directives")

    def close(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Release connections (optional)."""

    def claim_gate(self) -> ClaimGate:
        """Whether the worker may claim a job now; asked before every claim (optional hook).

        The default opens while ``check_health`` passes, so a worker whose
        service is down or restarting leaves jobs to workers that can run
        them instead of spending their retries on it. A connector may close
        it for other reasons too. Must be cheap and never raise.
        """
        try:
            health = self.check_health()
        except Exception as exc:  # a probe that breaks says the service is not usable
            return ClaimGate(False, f"health check failed: {type(exc).__name__}: {exc}")
        finally:
            self.close()  # next probe on a new connection: a kept-alive one hides a restart
        if health.healthy:
            return ClaimGate(True)
        reason = health.details.get("error") or health.details.get("reason") or "unhealthy"
        return ClaimGate(False, f"{self.service} service unhealthy: {reason}")

    # -- concrete helpers: the lifecycle log lines live here, once ---------------

    def log(self, event: str | None, job_id: str | None = None, level: int = logging.INFO,
            message: str | None = None, **fields: Any) -> None:
        """Write one connector log event (``job_received``, ...; None: a plain line)."""
        log_event(event, self.connector_id, self.service, job_id=job_id, level=level,
                  message=message, **fields)

    def run_job(self, job: JobInput, progress: ProgressCallback) -> JobOutput:
        """``process_job`` with its lifecycle logged and its processing time measured."""
        self.log("job_received", job.job_id)
        started = time.monotonic()

        def logged_progress(report: Progress) -> None:
            self.log("job_progress", job.job_id, logging.DEBUG, report.message or None,
                     percent=round(report.percent, 2))
            progress(report)

        try:
            output = self.process_job(job, logged_progress)
        except (JobCancelledByService, JobCancelled):
            self.log("job_cancelled", job.job_id)
            count_job(self.connector_id, "cancelled")
            raise
        except ConnectorError as exc:
            self.log("job_failed", job.job_id, logging.WARNING, str(exc),
                     error_type=exc.error_type.value)
            count_job(self.connector_id, "failed")
            raise
        except Exception as exc:
            self.log("job_failed", job.job_id, logging.ERROR, f"{type(exc).__name__}: {exc}",
                     error_type=ErrorType.UNKNOWN.value)
            count_job(self.connector_id, "failed")
            raise
        if not output.processing_time_ms:
            output.processing_time_ms = int((time.monotonic() - started) * 1000)
        self.log("job_completed", job.job_id, duration_ms=output.processing_time_ms)
        count_job(self.connector_id, "completed")
        return output

    def report_health(self) -> Health:
        """``check_health``, logged as a ``health_check`` event."""
        health = self.check_health()
        self.log("health_check", level=logging.INFO if health.healthy else logging.WARNING,
                 healthy=health.healthy, **{k: v for k, v in health.details.items()
                                            if isinstance(v, (str, int, float, bool))})
        return health
