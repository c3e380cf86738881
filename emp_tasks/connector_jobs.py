"""Run a job through the worker's connector: progress, cancellation and retries.

The connector's progress goes to ``task.progress`` (which raises JobCancelled
once the job is cancelled; the connector then stops the service's work).
The process's cancel watcher also checks, so a job that reports nothing for a
while (a model loading) still learns it: it calls ``cancel_job`` and the
connector raises JobCancelledByService. Failures carry an ErrorType:
a memory error first asks for a bigger GPU (``emp_tasks.oom_escalation``);
retryable ones go back to the queue through Celery's retry with exponential
backoff (the job's ``max_retries``), the others fail the job at once. A job
its service refused before running it (ServiceUnavailable) is given back
without spending a retry (``emp_tasks.service_release``). After every job
the connector's model residency changes are reported
(``emp_tasks.residency_report``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.utils.time import get_exponential_backoff_interval

from capability_router.errors import JobCancelled
from emp_tasks.bad_models import stop_advertising
from emp_tasks.cancel_watch import WATCH
from emp_tasks.directives import job_running
from emp_tasks.oom_escalation import escalate
from emp_tasks.residency_report import report_residency
from emp_tasks.service_release import release_or_retry
from machine.connectors.bad_models import ModelUnusableHere
from machine.connectors.base import (
    Connector,
    ConnectorError,
    ErrorType,
    JobCancelledByService,
    JobInput,
    JobOutput,
    Progress,
    ServiceUnavailable,
)
from machine.connectors.factory import get_connector


def job_input(task: Any, payload: dict[str, Any]) -> JobInput:
    """The connector's view of the task's job; requirements and ctx from the job record."""
    requirements = ctx = None
    context = task.job
    if context is not None:
        requirements, ctx = context.functions.client.hmget(
            context.functions.keys.job(context.job_id), "requirements", "ctx")
    return JobInput(job_id=task.request.id or "eager", service=task.service_name,
                    payload=payload, requirements=_json(requirements), ctx=_json(ctx))


def run_connector_job(task: Any, payload: dict[str, Any]) -> JobOutput:
    """Run ``payload`` on this process's connector for the task's service."""
    job = job_input(task, payload)
    connector = None
    try:
        connector = _connector(job.service)
        with job_running(), _cancel_watcher(task, connector, job.job_id):
            return connector.run_job(job, lambda report: _publish(task, report))
    except JobCancelledByService:
        raise JobCancelled(job.job_id) from None
    except ServiceUnavailable as exc:  # refused before it ran: no retry spent
        raise release_or_retry(task, exc, retry_or_fail) from None
    except ConnectorError as exc:
        if isinstance(exc, ModelUnusableHere):  # before the retry can be claimed
            stop_advertising(task, exc.bad_models, exc.message)
        raise (escalate(task, exc) or retry_or_fail(task, exc)) from None
    finally:
        if connector is not None:  # what the job loaded or pushed out, whatever its outcome
            report_residency(task, connector)


def _connector(service: str) -> Connector:
    """``get_connector``; a service it cannot reach to set up refused the job before it ran."""
    try:
        return get_connector(service)
    except ServiceUnavailable:
        raise
    except ConnectorError as exc:
        if exc.error_type != ErrorType.NETWORK:
            raise
        raise ServiceUnavailable(exc.message, ErrorType.NETWORK, exc.details) from exc


def retry_or_fail(task: Any, exc: ConnectorError) -> BaseException:
    """The exception to raise: Celery's Retry for retryable types, else ``exc`` itself.

    Backoff is ``retry_backoff * 2**retries`` seconds, capped at
    ``retry_backoff_max`` (task attributes). The limit is the job record's
    ``max_retries``, read at each retry rather than taken from the message;
    Celery re-raises ``exc`` once it is used up.
    """
    if not exc.retryable:
        return exc
    countdown = get_exponential_backoff_interval(
        factor=int(getattr(task, "retry_backoff", 1) or 1), retries=task.request.retries,
        maximum=int(getattr(task, "retry_backoff_max", 60) or 60), full_jitter=False)
    return task.retry(exc=exc, countdown=countdown, max_retries=_max_retries(task),
                      throw=False)


def _max_retries(task: Any) -> int | None:
    context = task.job
    if context is None:
        return None
    value = context.functions.client.hget(context.functions.keys.job(context.job_id),
                                          "max_retries")
    return int(value) if value else None


def _publish(task: Any, report: Progress) -> None:
    task.progress(report.percent, report.message or None, **report.details)


@contextmanager
def _cancel_watcher(task: Any, connector: Connector, job_id: str) -> Iterator[None]:
    """Tell the connector when the job is cancelled (``emp_tasks.cancel_watch``).

    The job context is taken here: Celery's ``task.request`` is thread-local,
    so the watcher thread could not find the job through the task.
    """
    context = task.job
    if context is None:  # run eagerly: nothing to watch
        yield
        return
    with WATCH.watching(context, lambda: connector.cancel_job(job_id)):
        yield


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
