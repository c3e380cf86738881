"""A job whose message the worker discards unrun ends failed, saying why.

Celery's worker throws away a message it cannot run: a task it has not registered
(``Received unregistered task``: its module not imported, the worker started with
another ``-A``) and one it refuses to read (a serializer outside its
``accept_content``, say ``apply_async(serializer="pickle")``, or a malformed message).
It acknowledges such a message with no outcome, which the queue recorded as "task
ended without recording an outcome (hard time limit or crash)"; and for a refused
message Celery stores no result, so the producer's ``AsyncResult.get()`` waited for
ever beside a failed job. Celery sends ``task_unknown`` or ``task_rejected`` right
after that acknowledgement is buffered (acks reach Redis with the next claim, as for
``emp_tasks.revocation``), so these receivers fail the job first, fenced by the
claim's attempt, with the reason; a refused message's FAILURE is stored too (an
unregistered task's ``NotRegistered`` Celery stores itself). A message whose body the
worker cannot decode (not valid for its content type, a broken compression) takes
Celery's ``on_decode_error``, which logs and acks it with no signal: a consumer step
(``FailUndecodable``) has it fail the job and store its FAILURE first. So does a body
its ``body_encoding`` cannot decode (not base64), which the transport's message
(``capability_router.message_body.CheckedMessage``) turns into a decode error. The job and
attempt are read from the delivery tag the transport gave the claim.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_rejected, task_unknown
from celery.utils.log import get_logger

from capability_router.transport import parse_tag
from emp_tasks.connection import get_functions

logger = get_logger(__name__)


def _claimed(message: Any) -> tuple[str, str, str] | None:
    """(job id, pool, attempt) of a message the worker claimed through EMP, read from its
    delivery tag (the transport's ``emp|<pool>|<job id>|<attempt>``), which holds even
    when the message's headers or body cannot be read; None for any other message
    (not a job's claim, nothing to fence)."""
    parsed = parse_tag(getattr(message, "delivery_tag", None))
    if parsed is None:
        return None
    pool, job_id, attempt = parsed
    return job_id, pool, attempt


def _fail(app: Celery, message: Any, reason: str) -> str | None:
    """Fail the claimed job of ``message`` with ``reason``; its id when the record took
    it (refused: the attempt no longer holds the job, which is then left alone)."""
    claimed = _claimed(message)
    if claimed is None:
        return None
    job_id, pool, attempt = claimed
    try:
        outcome = get_functions(app.conf.broker_url, pool).fail(job_id, attempt, reason)
    except Exception:  # noqa: BLE001 - a signal receiver must not break the consumer
        logger.warning("could not fail discarded job %s", job_id, exc_info=True)
        return None
    return job_id if outcome == "ok" else None


def fail_unknown(sender: Any = None, message: Any = None, exc: Any = None,
                 name: str | None = None, id: str | None = None,  # noqa: A002 - Celery's
                 **_: Any) -> None:
    """``task_unknown`` receiver: the worker has no task of the message's name."""
    if sender is None:
        return
    hostname = getattr(sender, "hostname", None) or "this worker"
    _fail(sender.app, message,
          f"NotRegistered: worker {hostname} has no task {name!r} (import its module in "
          "the worker: its app's include/imports, or celery -A <the app that defines it>)")


def fail_rejected(sender: Any = None, message: Any = None, exc: Any = None,
                  **_: Any) -> None:
    """``task_rejected`` receiver: the worker refused to read the message."""
    if sender is None:
        return
    app = sender.app
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "not a task message"
    accepted = ", ".join(sorted(app.conf.accept_content or ()))
    job_id = _fail(app, message, f"the worker discarded the message unrun ({what}); its "
                                 f"accept_content is [{accepted}]")
    _store_failure(app, job_id, exc if isinstance(exc, Exception) else ValueError(what))


def fail_undecodable(consumer: Any, message: Any, exc: BaseException) -> None:
    """Before Celery's ``on_decode_error`` (which logs and acks, sending no signal): the
    worker cannot decode the message's body (not valid for its content type, a broken
    compression), so the job fails saying so and its FAILURE is stored."""
    content_type = getattr(message, "content_type", None)
    job_id = _fail(consumer.app, message,
                   f"the worker could not decode the message ({type(exc).__name__}: {exc}); "
                   f"content type {content_type!r}")
    _store_failure(consumer.app, job_id, exc if isinstance(exc, Exception) else
                   ValueError(str(exc)))


def _store_failure(app: Celery, job_id: str | None, error: Exception) -> None:
    """Store the FAILURE of a discarded job the record failed (None: it did not), so the
    producer's ``AsyncResult.get()`` raises rather than waits for ever."""
    if job_id is None:
        return
    try:
        app.backend.mark_as_failure(job_id, error)
    except Exception:  # noqa: BLE001 - the record says failed; the result stays PENDING
        logger.warning("could not store the failure of discarded job %s", job_id,
                       exc_info=True)


class FailUndecodable(bootsteps.Step):
    """Consumer step: wraps the consumer's ``on_decode_error`` (set before its Tasks step
    hands it to the task consumer) with ``fail_undecodable``."""

    name = "emp.fail-undecodable"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        celery_handler = parent.on_decode_error

        def on_decode_error(message: Any, exc: BaseException) -> None:
            try:
                fail_undecodable(parent, message, exc)
            finally:
                celery_handler(message, exc)

        parent.on_decode_error = on_decode_error


def init_app(app: Celery) -> None:
    """Have the app's workers fail the jobs whose messages they discard (the signal
    receivers once per process, the consumer step per app)."""
    task_unknown.connect(fail_unknown, weak=False, dispatch_uid="emp-fail-unknown")
    task_rejected.connect(fail_rejected, weak=False, dispatch_uid="emp-fail-rejected")
    app.steps["consumer"].add(FailUndecodable)
