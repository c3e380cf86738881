"""The Jobs views' reads, and what an operator may do to one job.

Reads go through the listing indexes (``webapp.api.listing``) and the
producer API; every action is the producer API's, the same calls the REST
API makes, so the monitor cannot do what a client could not.
"""

from __future__ import annotations

import functools
from typing import Any

import redis
from celery import Celery
from jsonschema import Draft4Validator

from capability_router.keys import DEFAULT_NAMESPACE, check_namespace
from capability_router.states import JobStatus
from capability_router.whole_numbers import is_whole, whole_number
from emp_tasks import producer
from webapp.api import listing
from webapp.api.openapi import build
from webapp.api.submission import Submitted, submit_body
from webapp.api.validation import build_validator, check
from webapp.auth import Principal
from webapp.backend import Backend
from webapp.monitor.queue import class_servability

#: The monitor's user is an operator: every customer, every pool.
OPERATOR = Principal(admin=True)
#: Query parameters of the jobs list, besides ``limit`` and ``offset``.
FILTERS = ("status", "service", "customer_id", "workflow_id", "pool")
MAX_LIMIT = 200
#: Record fields the list shows (the job page shows everything).
SUMMARY_FIELDS = (
    "job_id", "status", "service_required", "priority", "customer_id", "workflow_id",
    "current_step", "total_steps", "pool", "worker_id", "attempts", "progress",
    "progress_message", "created_at", "started_at", "completed_at", "failed_at",
    "cancelled_at", "last_error",
)


class BadQuery(ValueError):
    """A query parameter the jobs list cannot use; the message names it."""


def parse_query(args: dict[str, str]) -> dict[str, Any]:
    """Filters, ``limit`` (1-200, default 50) and ``offset`` from query parameters."""
    unknown = set(args) - {*FILTERS, "limit", "offset"}
    if unknown:
        raise BadQuery(f"unknown query parameter {sorted(unknown)[0]!r}; use one of "
                       f"{', '.join((*FILTERS, 'limit', 'offset'))}")
    query: dict[str, Any] = {name: (args.get(name) or "").strip() or None for name in FILTERS}
    if query["status"] is not None and query["status"] not in set(JobStatus):
        raise BadQuery(f"status {query['status']!r} is not one of "
                       f"{', '.join(s.value for s in JobStatus)}")
    for name in FILTERS:
        if query[name] is not None and len(query[name]) > 200:
            raise BadQuery(f"{name} is longer than 200 characters")
    if query["pool"] is not None:
        try:
            check_namespace(query["pool"])
        except ValueError as exc:  # a pool's keys cannot even be named: 400, not 500
            raise BadQuery(str(exc)) from None
    query["limit"] = _bounded(args, "limit", 50, 1, MAX_LIMIT)
    query["offset"] = _bounded(args, "offset", 0, 0, 10**9)
    return query


def _bounded(args: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = args.get(name)
    if text in (None, ""):
        return default
    # ASCII digits alone, as the REST API reads them (int() took '٣', '1_0' and '+5')
    if not is_whole(text, signed=True):
        raise BadQuery(f"{name} must be a whole number, not {text!r}")
    value = whole_number(text, 18, signed=True)
    value = high + 1 if value is None else value  # more digits than any bound
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}")
    return value


def list_jobs(client: redis.Redis, query: dict[str, Any]) -> dict[str, Any]:
    """A page of job summaries, newest first, and how many match."""
    page = listing.list_jobs(client, **query)
    jobs = [{k: job.get(k) for k in SUMMARY_FIELDS if job.get(k) not in (None, "")}
            for job in page.jobs]
    return {"jobs": jobs, "total": page.total, "limit": query["limit"],
            "offset": query["offset"]}


def job_detail(app: Celery, job_id: str, client: redis.Redis | None = None) -> dict[str, Any]:
    """The job record with its event timeline (oldest first); raises JobNotFound.

    With ``client``, a pending job's record also says whether a live worker
    can serve it and, if none can, why (``servability``, see
    ``queue.class_servability``).
    """
    job = producer.get_job(job_id, app=app)
    events = producer.job_events(job_id, pool=job.get("pool"), app=app)
    if client is not None and job.get("status") == JobStatus.PENDING and job.get("class"):
        job["servability"] = class_servability(client, job.get("pool") or DEFAULT_NAMESPACE,
                                               job["class"])
    return {"job": job, "events": events}


@functools.lru_cache(maxsize=4)
def submission_validator(services: tuple[str, ...]) -> Draft4Validator:
    """The API's ``JobSubmission`` checker for these services."""
    return build_validator(build(list(services)), "JobSubmission")


def submit(body: dict[str, Any], backend: Backend) -> Submitted:
    """Check a form's job against the API's schema, then submit it as the API does (the
    form cannot file what a client could not); returns its id, pool and the warnings
    ``POST /api/jobs`` would answer with. Raises Invalid."""
    check("JobSubmission", body,
          submission_validator(tuple(sorted(producer.services(backend.celery)))))
    return submit_body(body, OPERATOR, backend, checked=True)


class Refused(Exception):
    """An action the job's state does not allow; the message names the state."""


def _refuse(job_id: str, status: str, rule: str) -> Refused:
    return Refused(f"job {job_id!r} is {status}: {rule}")


def cancel(app: Celery, job_id: str, terminate: bool = False) -> str:
    """Cancel a pending or running job: 'cancelled'; raises Refused or JobNotFound."""
    rule = "only a pending or running job can be cancelled"
    job = producer.get_job(job_id, app=app)
    if JobStatus(job["status"]).is_terminal:
        raise _refuse(job_id, job["status"], rule)
    status = producer.cancel(job_id, pool=job.get("pool"), app=app, terminate=terminate)
    if status != JobStatus.CANCELLED:  # it ended on its own meanwhile
        raise _refuse(job_id, status, rule)
    return status


def retry(app: Celery, job_id: str) -> str:
    """Run a failed or cancelled job again: 'pending'; raises Refused or JobNotFound."""
    rule = "only a failed or cancelled job can be retried"
    job = producer.get_job(job_id, app=app)
    if job["status"] not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise _refuse(job_id, job["status"], rule)
    status = producer.resubmit(job_id, pool=job.get("pool"), app=app,
                               reason="retried from the monitor")
    if status != JobStatus.PENDING:
        raise _refuse(job_id, status, rule)
    return status


def requeue(app: Celery, job_id: str) -> str:
    """Put a running job back in line: 'pending' ('failed' when no attempt is left);
    raises Refused or JobNotFound."""
    rule = "only an assigned or in-progress job can be requeued"
    job = producer.get_job(job_id, app=app)
    if not JobStatus(job["status"]).is_active:
        raise _refuse(job_id, job["status"], rule)
    status = producer.requeue(job_id, pool=job.get("pool"), app=app,
                              reason="requeued from the monitor")
    if status not in (JobStatus.PENDING, JobStatus.FAILED):
        raise _refuse(job_id, status, rule)
    return status
