"""The producer API: submit a job, read its record and events, cancel or resubmit it."""

from __future__ import annotations

import json
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery
from celery.result import AsyncResult

from capability_router.errors import InvalidJob, JobNotFound
from capability_router.keys import (
    DEFAULT_NAMESPACE,
    NAMESPACES_KEY,
    Keys,
    check_job_id,
    namespaces_of,
)
from capability_router.message_body import payload_of
from capability_router.registry import WorkerRegistry
from capability_router.states import JobStatus
from emp_tasks.cancellation import revoke_unclaimed, revoke_unstarted
from emp_tasks.connection import get_client, get_functions
from emp_tasks.remote_control import forget_revoked

#: Record fields stored as JSON text.
JSON_FIELDS = ("payload", "requirements", "ctx", "result", "progress_details", "routing",
               "preparing", "escalations", "replaced")
#: Record fields stored as numbers.
NUMBER_FIELDS = (
    "priority", "max_retries", "attempts", "retries", "progress", "workflow_priority",
    "workflow_datetime", "current_step", "total_steps", "created_at", "assigned_at",
    "started_at", "completed_at", "failed_at", "cancelled_at", "retry_at", "lease_until",
    "updated_at", "service_releases", "unreceived", "released_at", "predicted_ms", "work_units",
    "replaces", "replaced_at", "replaced_retries",
)


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from emp_tasks.app import app as default_app

    return default_app


#: Per app: (how many tasks it had, its job types by service) when last read.
_job_types: WeakKeyDictionary[Celery, tuple[int, dict[str, list[Any]]]] = WeakKeyDictionary()


def service_tasks(app: Celery | None = None) -> dict[str, list[Any]]:
    """Registered job types by service: service name -> the tasks declaring it, by name.

    Read again only when the app's registry has grown (a task registered since; Celery
    keeps the first task of a name, so a registry of the same size holds the same
    tasks): reading it at every submit was ~15% of a submit's CPU. The app's default
    modules (``include``, ``imports``) are imported at the first read, as a worker does
    at its start. Read-only: the same dict is given to every caller."""
    app = _app(app)
    known = _job_types.get(app)
    if known is None:
        app.loader.import_default_modules()
    tasks = app.tasks
    if known is not None and known[0] == len(tasks):
        return known[1]
    declared: dict[str, list[Any]] = {}
    for name in sorted(tasks):
        task = tasks[name]
        if getattr(task, "service", None):
            declared.setdefault(task.service, []).append(task)
    _job_types[app] = (len(tasks), declared)
    return declared


def own_task(service: str, tasks: list[Any]) -> Any | None:
    """The task a submit of ``service`` runs: its only one, else the one named after it
    (``<service>``, then EMP's built-in ``emp.<service>``); None when that cannot be told."""
    if len(tasks) == 1:
        return tasks[0]
    by_name = {task.name: task for task in tasks}
    return by_name.get(service) or by_name.get(f"emp.{service}")


def services(app: Celery | None = None) -> dict[str, Any]:
    """Registered job types: service name -> its task (``own_task``; for a service several
    tasks declare and none is named after, the first by name, for its attributes only:
    a submit of it is refused, ``service_task``)."""
    return {service: own_task(service, tasks) or tasks[0]
            for service, tasks in service_tasks(app).items()}


def service_task(service: str, app: Celery | None = None) -> Any:
    """The job type a submit by service name runs (``submit``, ``emp submit``, the API).

    Several Celery tasks may declare one service (it is what a worker must serve);
    before, the last one the app happened to register was run, so a project's own task
    on ``echo`` or ``comfyui`` could take the built-in's submits. InvalidJob for an
    unknown service and for one whose task cannot be told (``own_task``)."""
    declared = service_tasks(app)
    tasks = declared.get(service)
    if not tasks:
        known = ", ".join(sorted(declared)) or "none"
        raise InvalidJob(f"unknown service {service!r} (known: {known})")
    task = own_task(service, tasks)
    if task is None:
        names = ", ".join(t.name for t in tasks)
        raise InvalidJob(
            f"service {service!r} is the service of several job types ({names}); a submit "
            f"by service cannot tell which to run: submit one by its task name "
            f"(task.apply_async, app.send_task), or name one of them {service!r}")
    return task


def submit(
    service: str, payload: dict[str, Any] | None = None,
    requirements: dict[str, Any] | None = None, priority: int = 50,
    customer_id: str | None = None, app: Celery | None = None, **job_fields: Any,
) -> AsyncResult:
    """Submit a job; returns Celery's AsyncResult whose id is the job id.

    ``job_fields`` are the original's other job fields (``max_retries``,
    ``workflow_id``, ...), ``pool``, and Celery options such as ``task_id``
    (the original's ``message_id`` is accepted as ``task_id``; both, naming two ids,
    are refused).
    """
    task = service_task(service, app)
    if payload is not None and not isinstance(payload, dict):
        raise InvalidJob(f"payload must be a JSON object, got {type(payload).__name__}")
    if "message_id" in job_fields:
        message_id = job_fields.pop("message_id")
        if job_fields.get("task_id") not in (None, message_id):
            raise InvalidJob(f"message_id {message_id!r} and task_id "
                             f"{job_fields['task_id']!r} name two ids; give one")
        job_fields["task_id"] = message_id
    return task.apply_async(
        kwargs=payload or {}, requirements=requirements, priority=priority,
        customer_id=customer_id, **job_fields,
    )


def decode_record(raw: dict[str, str]) -> dict[str, Any]:
    """A job record hash as JSON-ready values.

    The payload is kept once, in the stored Celery message (``message_body``);
    it is read from there when the record has no ``payload`` field.
    """
    record: dict[str, Any] = {}
    if "payload" not in raw and raw.get("message"):
        payload = payload_of(raw["message"])
        if payload is not None:
            record["payload"] = payload
    for key, value in raw.items():
        if key == "message":
            continue
        if key in JSON_FIELDS:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif key in NUMBER_FIELDS and value != "":
            number = float(value)
            value = int(number) if number.is_integer() else number
        record[key] = value
    return record


def get_job(job_id: str, pool: str | None = None, app: Celery | None = None) -> dict[str, Any]:
    """The job record; raises JobNotFound (also for an id no job can have, whose key may
    be another job's event stream: ``check_job_id``)."""
    try:
        check_job_id(job_id)
    except ValueError:
        raise JobNotFound(job_id) from None
    app = _app(app)
    client = get_client(app.conf.broker_url)
    if pool:
        namespaces = [pool]
    else:
        # The pool list and the default pool's record (looked at first) in one round
        # trip: most jobs are found there, and a lookup was two round trips.
        with client.pipeline(transaction=False) as pipe:
            pipe.smembers(NAMESPACES_KEY)
            pipe.hgetall(Keys(DEFAULT_NAMESPACE).job(job_id))
            members, raw = pipe.execute()
        if raw:
            return decode_record(raw)
        namespaces = [n for n in namespaces_of(members) if n != DEFAULT_NAMESPACE]
    for namespace in namespaces:
        raw = client.hgetall(Keys(namespace).job(job_id))
        if raw:
            return decode_record(raw)
    raise JobNotFound(job_id)


def job_events(job_id: str, pool: str | None = None, app: Celery | None = None,
               after: str = "-") -> list[dict[str, Any]]:
    """The job's events in order: ``{id, event, data}``."""
    app = _app(app)
    namespace = pool or get_job(job_id, app=app).get("pool", DEFAULT_NAMESPACE)
    client = get_client(app.conf.broker_url)
    entries = client.xrange(Keys(namespace).job_events(job_id), min=after)
    return [
        {"id": entry_id, "event": fields["event"], "data": json.loads(fields["data"])}
        for entry_id, fields in entries
    ]


def cancel(job_id: str, pool: str | None = None, app: Celery | None = None,
           terminate: bool = False) -> str:
    """Cancel a job; returns its status after the call.

    A pending job is removed at once; a running job's task learns it at its
    next progress report or cancellation check. ``terminate`` also has Celery
    revoke it, killing the process running it. Only then: a worker keeps a
    revoked id and would drop the job's message if it were resubmitted
    (``resubmit`` has workers forget it first).
    """
    app = _app(app)
    namespace = pool or get_job(job_id, app=app).get("pool", DEFAULT_NAMESPACE)
    reply = get_functions(app.conf.broker_url, namespace).cancel(job_id)
    if reply[0] == "missing":
        raise JobNotFound(job_id)
    if len(reply) < 2:  # ended already (cancelled before: a repeat, or a lost reply sent again)
        return reply[0]
    if reply[0] == JobStatus.CANCELLED and not JobStatus(reply[1]).is_active:
        revoke_unclaimed(app, job_id, namespace)  # a running job's run ends REVOKED itself
    elif reply[0] == JobStatus.CANCELLED and reply[1] == JobStatus.ASSIGNED:
        revoke_unstarted(app, job_id, namespace)  # it may wait in a worker's rate-limit bucket
    if terminate and reply[0] == JobStatus.CANCELLED and JobStatus(reply[1]).is_active:
        app.control.revoke(job_id, terminate=True)
    return reply[0]


def resubmit(job_id: str, pool: str | None = None, app: Celery | None = None,
             reason: str = "resubmitted by request") -> str:
    """Run a failed or cancelled job again under its id, from its old place in line.

    Returns 'pending', or the status that refuses it; raises JobNotFound.
    A cancelled job may have been revoked (``cancel(terminate=True)``), so
    every live worker is first told to forget that revoke (a second at most).
    """
    app = _app(app)
    client = get_client(app.conf.broker_url)
    record = get_job(job_id, pool=pool, app=app)
    namespace = record.get("pool") or DEFAULT_NAMESPACE
    if record.get("status") == JobStatus.CANCELLED:
        forget_revoked(app, [job_id], workers=len(WorkerRegistry(client).workers()))
    status = get_functions(app.conf.broker_url, namespace).resubmit(job_id, reason)
    if status == "missing":
        raise JobNotFound(job_id)
    return status


def requeue(job_id: str, pool: str | None = None, app: Celery | None = None,
            reason: str = "requeued by request") -> str:
    """Take a running job from its worker and put it back in line for another one.

    For a job stuck on a worker that still renews its lease. The attempt is
    fenced, so the old run's late result is refused; it is not revoked in
    Celery (that would make the next worker drop the job too). Returns
    'pending', 'failed' when no attempt is left, or the status that refuses
    it (only assigned and in-progress jobs can be requeued); raises JobNotFound.
    """
    app = _app(app)
    record = get_job(job_id, pool=pool, app=app)
    status = JobStatus(record["status"])
    if not status.is_active:
        return status.value
    namespace = record.get("pool") or DEFAULT_NAMESPACE
    return get_functions(app.conf.broker_url, namespace).requeue(
        job_id, record.get("attempts") or "", reason)
