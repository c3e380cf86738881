"""REST jobs: submit, read, list, cancel and retry (the original's wire formats).

A customer token acts only as its own customer: it submits under its id and
never learns that another customer's job exists (404, not 403). Submission
goes through ``emp_tasks.producer.submit``, the one way in, after the body
passed the OpenAPI schema, so bad input writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from capability_router.errors import InvalidJob, JobNotFound
from capability_router.states import TERMINAL, JobStatus
from emp_tasks import producer
from webapp import job_ids
from webapp.api import idempotency, listing, validation
from webapp.api.limits import Limited, Limits
from webapp.api.submission import submit_body
from webapp.auth import Principal, error, require_auth
from webapp.backend import backend

blueprint = Blueprint("jobs", __name__)

#: Jobs a retry may run again.
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


@blueprint.errorhandler(validation.Invalid)
def invalid(exc: validation.Invalid):  # noqa: ANN201 - Flask response
    return error(exc.status, str(exc))


@blueprint.errorhandler(InvalidJob)
def invalid_job(exc: InvalidJob):  # noqa: ANN201 - Flask response
    return invalid(validation.Invalid(str(exc)))


@blueprint.errorhandler(Limited)
def limited(exc: Limited):  # noqa: ANN201 - Flask response
    response = error(429, str(exc), limit=exc.limit)
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _limits() -> Limits:
    return current_app.extensions["emp_limits"]


@blueprint.errorhandler(JobNotFound)
def not_found(exc: JobNotFound):  # noqa: ANN201 - Flask response
    return error(404, str(exc))


def _principal() -> Principal:
    return g.principal


def visible_job(job_id: str) -> dict[str, Any]:
    """The record of the job the caller knows as ``job_id`` (stored under its own id, or
    scoped to the caller's customer: ``webapp.job_ids``); JobNotFound otherwise, the same
    answer for another customer's job as for none."""
    record = job_ids.visible_record(job_id, _principal(), backend().celery)
    if record is None:
        raise JobNotFound(job_id)
    return record


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _submitted(job_id: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """The 201 body; ``warnings`` only when there are some (``pool_view.unserved_warnings``)."""
    return {"success": True, "job_id": job_id, "message": "Job submitted successfully",
            "timestamp": _now_iso(), **({"warnings": warnings} if warnings else {})}


def _answer(status: int, body: dict[str, Any], replayed: bool = False):  # noqa: ANN202
    response = jsonify(body)
    response.status_code = status
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@blueprint.post("/api/jobs")
@require_auth()
def submit_job():  # noqa: ANN201 - Flask response
    """Submit a job: 201 with its id, or 400/403/409/429 having written nothing; with an
    Idempotency-Key, a retry gets the first 201 (422 for another body); a refusal keeps
    no answer, so its retry is checked again."""
    body = validation.json_body("JobSubmission")
    key = request.headers.get(idempotency.HEADER)
    if key is not None:
        return _submit_idempotently(body, key)
    submitted = submit_body(body, _principal(), backend(), checked=True, limits=_limits())
    return _answer(201, _submitted(job_ids.shown(submitted.job_id, _principal().id_scope),
                                   submitted.warnings))


def _submit_idempotently(body: dict[str, Any], key: str):  # noqa: ANN202 - Flask response
    """The first request with ``key`` submits and stores its 201 (a refusal frees the
    key); a retry gets that answer (409 when it named a job whose record was swept
    since), or the job filed under the key, or (neither there yet) submits under the
    same job id."""
    try:
        idempotency.check_key(key)
    except ValueError as exc:
        return error(400, str(exc))
    principal = _principal()
    store = idempotency.IdempotencyStore(
        backend().redis, current_app.config["EMP_SETTINGS"].idempotency_seconds)
    try:
        claim = store.claim(principal, "key", key, body,
                            body.get("message_id") or body.get("job_id"))
    except idempotency.KeyReused as exc:
        return error(422, f"{idempotency.HEADER}: {exc}")
    if claim.answer is not None:
        if claim.answer[0] == 201 and not _own_job(claim.job_id):  # swept meanwhile
            shown = claim.answer[1].get("job_id") or claim.job_id
            return error(409, idempotency.swept_message(shown), job_id=shown)
        return _answer(*claim.answer, replayed=True)
    if not claim.first:  # the first request has no answer: on its way, or it failed
        if _own_job(claim.job_id):  # its job was filed (a 503 may have come after that)
            return _filed_for_key(store, claim)
        answer = store.wait_answer(claim)
        if answer is not None:
            return _answer(*answer, replayed=True)
        store.take_over(claim)
    try:
        submitted = submit_body(body, principal, backend(), checked=True,
                                job_id=claim.job_id, limits=_limits(),
                                pin=partial(store.placed, claim))
    except Limited:  # nothing written and no answer to keep: the retry after Retry-After
        store.release(claim)  # claims the key afresh (as the socket's submit does)
        raise
    except validation.Invalid as exc:
        if exc.status == 409 and (not claim.first or store.taken_over(claim)) \
                and _own_job(claim.job_id):
            return _filed_for_key(store, claim)  # the other attempt with the key filed it
        # A refusal wrote nothing, so no answer is kept (as for the schema's 400, a 429,
        # and the socket's submit): the retry is checked afresh and cannot double a job.
        # A kept refusal went stale: a pool made since stayed "does not exist" for the
        # key's whole window. Only while another attempt is on its way with the key (a
        # retry took it over, or this is one) is the refusal stored, as before: the
        # record must stay for that attempt's 201 to replace it.
        if claim.first and not store.taken_over(claim):
            store.release(claim)
            raise
        refusal = {"success": False, "error": str(exc)}
        store.answer(claim, exc.status, refusal)
        return _answer(exc.status, refusal)
    accepted = _submitted(job_ids.shown(submitted.job_id, principal.id_scope),
                          submitted.warnings)
    store.answer(claim, 201, accepted)
    return _answer(201, accepted)  # filed by this request, even a retry: not a replay


def _filed_for_key(store: idempotency.IdempotencyStore, claim: idempotency.Claim):  # noqa: ANN202
    """Answer with the job another request with the key filed: its stored 201, else a 201
    naming it, stored for the next retry."""
    answer = store.stored_answer(claim)
    if answer is None or answer[0] != 201:
        answer = 201, _submitted(job_ids.shown(claim.job_id, _principal().id_scope))
        store.answer(claim, *answer)
    return _answer(*answer, replayed=True)


def _own_job(job_id: str) -> bool:
    try:
        visible_job(job_id)
    except JobNotFound:
        return False
    return True


@blueprint.get("/api/jobs/<job_id>")
@require_auth()
def get_job(job_id: str):  # noqa: ANN201 - Flask response
    """The job record, or 404 (also for another customer's job)."""
    return jsonify(success=True,
                   job=job_ids.shown_record(visible_job(job_id), _principal().id_scope))


@blueprint.get("/api/jobs")
@require_auth()
def list_jobs():  # noqa: ANN201 - Flask response
    """A page of jobs newest first; a customer token lists its own jobs only."""
    params = validation.query("/api/jobs", "get")
    principal = _principal()
    customer_id = params["customer_id"] or None
    if not principal.admin:
        if customer_id not in (None, principal.customer_id):
            return error(403, f"customer_id {customer_id!r} is not this token's customer")
        customer_id = principal.customer_id
    page = listing.list_jobs(
        backend().redis, status=params["status"] or None, service=params["service"] or None,
        customer_id=customer_id, workflow_id=params["workflow_id"] or None,
        pool=params["pool"] or None, limit=params["limit"], offset=params["offset"],
    )
    jobs = [job_ids.shown_record(job, principal.id_scope) for job in page.jobs]
    return jsonify(success=True, jobs=jobs, total=page.total, limit=params["limit"],
                   offset=params["offset"])


@blueprint.post("/api/jobs/<job_id>/cancel")
@require_auth()
def cancel_job(job_id: str):  # noqa: ANN201 - Flask response
    """Cancel a pending or running job; 409 naming the status when it already ended."""
    params = validation.query("/api/jobs/{job_id}/cancel", "post")
    record = visible_job(job_id)
    status = record.get("status")
    if status not in TERMINAL:
        status = producer.cancel(record["job_id"], pool=record.get("pool"),
                                 app=backend().cancelling, terminate=params["terminate"])
        if status == JobStatus.CANCELLED:
            return jsonify(success=True, job_id=job_id, status=str(status))
    return error(409, f"job {job_id!r} is already {status}", job_status=status)


@blueprint.post("/api/jobs/<job_id>/retry")
@require_auth()
def retry_job(job_id: str):  # noqa: ANN201 - Flask response
    """Run a failed or cancelled job again under its id; 409 for any other state.

    A cancelled run that has not noticed yet may still be ending on its
    worker; its late words are refused (the new run has a new attempt number).
    """
    record = visible_job(job_id)
    status = record.get("status")
    if status not in RETRYABLE:
        return error(409, f"job {job_id!r} is {status}; only failed or cancelled jobs can be "
                          "retried", job_status=status)
    status = producer.resubmit(record["job_id"], pool=record.get("pool"), app=backend().celery)
    if status != JobStatus.PENDING:
        return error(409, f"job {job_id!r} is {status}; only failed or cancelled jobs can be "
                          "retried", job_status=status)
    return jsonify(success=True, job_id=job_id, status=str(status))
