"""One way in for a job sent over HTTP or WebSocket: checked, then submitted through Celery.

The body is checked against the OpenAPI document's ``JobSubmission`` schema
first, so a refused body writes nothing; then ``emp_tasks.producer.submit``
files it exactly as a Python producer would.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from capability_router import job_id_reservations as reservations
from capability_router.errors import InvalidJob
from capability_router.job_id_reservations import NEW_ID_HEADER
from capability_router.jobspec import SERVICE_ALIASES, JobSpec
from capability_router.keys import DEFAULT_NAMESPACE, NAMESPACES_KEY, Keys, check_job_id
from capability_router.pool_view import required_models, unserved_warnings
from emp_tasks import placement, producer
from webapp import job_ids
from webapp.api import listing, validation
from webapp.api.limits import Limits
from webapp.api.validation import Invalid
from webapp.auth import Principal
from webapp.backend import Backend

logger = logging.getLogger(__name__)

#: Body fields handed to ``producer.submit`` as job fields, besides service and payload.
JOB_FIELDS = (
    "requirements", "priority", "max_retries", "workflow_id", "workflow_priority",
    "workflow_datetime", "current_step", "total_steps", "ctx", "pool",
)


def _owners(backend: Backend, *job_ids: str) -> list[list[str | None]]:
    """For each id, the customers of the jobs some pool holds under it (none: the id is
    free); one pipeline for them all."""
    client = backend.redis
    namespaces = listing.namespaces(client)
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            for namespace in namespaces:
                pipe.exists(Keys(namespace).job(job_id))
                pipe.hget(Keys(namespace).job(job_id), "customer_id")
        replies = pipe.execute()
    pairs = list(zip(replies[::2], replies[1::2], strict=True))  # (exists, customer)
    per_id = len(namespaces)
    return [[customer or None for exists, customer in pairs[n * per_id:(n + 1) * per_id]
             if exists] for n in range(len(job_ids))]


def _new_job_id(backend: Backend, job_id: str, principal: Principal) -> str:
    """The id to store a job the caller named ``job_id`` under; Invalid (409) when the
    caller already has that job. A customer's id held by another customer gives the
    scoped id (``webapp.job_ids``), answered exactly as a free id would be."""
    if principal.admin:
        if _owners(backend, job_id)[0]:
            raise Invalid(f"job {job_id!r} already exists", 409)
        return job_id
    own = job_ids.scoped(job_id, principal.customer_id)
    owners, own_taken = _owners(backend, job_id, own)
    if principal.customer_id in owners or own_taken:
        raise Invalid(f"job {job_id!r} already exists", 409)
    if not owners:  # another customer's filing of it on its way counts as its job
        held = reservations.holder(backend.redis, job_id)
        if held is not None and held.customer != principal.customer_id:
            owners = [held.customer]
    return own if owners else job_id


#: Pools found to exist, per process: a pool is never removed, so each is looked up once.
_existing_pools: set[str] = {DEFAULT_NAMESPACE}


def _pool_exists(backend: Backend, pool: str) -> bool:
    """True for a pool some worker, producer or admin made (it is in the set of pools) or
    the pools file names. A customer may not make pools: each one it named was kept for
    good, and every reader of all pools (listings, event readers, the webhook consumer,
    the monitor) slowed with their number (2,000 made by one tenant: a listing of 10 jobs
    by another customer went from 1.8 to 36 ms)."""
    if pool in _existing_pools:
        return True
    router = placement.router_for(backend.celery)
    if (router is not None and pool in router.pools) or backend.redis.sismember(
            NAMESPACES_KEY, pool):
        _existing_pools.add(pool)
        return True
    return False


def _placement(service: str, payload: Any, fields: dict[str, Any], customer_id: str | None,
               backend: Backend) -> JobSpec:
    """The job's pool and requirement class, as the producer will compute them (its
    ``pool``, or ``requirements.pool``, else the router's pool when routing is on)."""
    try:
        spec = JobSpec(service, payload=payload if isinstance(payload, dict) else {},
                       requirements=fields.get("requirements") or {},
                       customer_id=customer_id, workflow_id=fields.get("workflow_id"),
                       pool=fields.get("pool"))
        if placement.router_for(backend.celery) is None:  # routing off
            return spec
        task = producer.services(backend.celery).get(service)
        if task is not None:  # an unknown service is refused by the submit
            spec = placement.place(backend.celery, spec, task.duration_features,
                                       task.duration_fields)
        return spec
    except InvalidJob as exc:
        raise Invalid(str(exc)) from None


class Submitted(NamedTuple):
    """A filed job: its stored id, its pool, and what its submitter should know."""

    job_id: str
    pool: str
    #: Plain sentences; empty when nothing is amiss (``lookup_warnings``).
    warnings: list[str]


def lookup_warnings(backend: Backend, pool: str, named: bool,
                    models: tuple[str, list[str]] = ("", [])) -> list[str]:
    """``pool_view.unserved_warnings`` for a job this API filed (its service and required
    ``models``), with the pools file routing uses here; a lookup that fails says nothing:
    the job is filed, and its answer must not turn into a 5xx (a retry would then submit it
    again)."""
    router = placement.router_for(backend.celery)
    try:
        return unserved_warnings(backend.redis, pool, named,
                                 router.pools_file if router is not None else None, models)
    except Exception:  # noqa: BLE001 - the job is filed: a lookup failing must not 5xx it
        logger.debug("could not tell whether a live worker serves pool %s (or its models)", pool,
                     exc_info=True)
        return []


#: Given the pool and routing record a submit placed its job with, the ones to file it
#: with (``IdempotencyStore.placed``: every attempt with one key files in one pool).
Pin = Callable[[str, dict[str, str] | None], tuple[str, dict[str, str] | None]]


def submit_body(body: Any, principal: Principal, backend: Backend,
                checked: bool = False, job_id: str | None = None,
                limits: Limits | None = None, pin: Pin | None = None) -> Submitted:
    """Submit a job body; returns its stored id, pool and warnings. Raises Invalid
    (400/403/409), or
    Limited (429) when ``limits`` refuse the customer another job, having written nothing.

    A customer token submits as its own customer only; ``message_id`` (or
    ``job_id``; the schema refuses both) becomes the job id, else ``job_id``
    when given (an idempotent submit's claimed id), scoped to the customer when
    another customer holds it (``webapp.job_ids``). Aliases of the service
    that disagree are refused, naming both.
    """
    if not checked:
        validation.check("JobSubmission", body)
    named = [(alias, body[alias]) for alias in SERVICE_ALIASES if body.get(alias) is not None]
    if not named:
        raise Invalid("service_required is required (or its alias job_type or type)")
    service = named[0][1]
    if any(value != service for _, value in named):
        raise Invalid(" and ".join(f"{alias} {value!r}" for alias, value in named)
                      + " name different services; send one")
    customer_id = body.get("customer_id")
    if not principal.admin:
        if customer_id not in (None, principal.customer_id):
            raise Invalid(f"customer_id {customer_id!r} is not this token's customer", 403)
        customer_id = principal.customer_id
    ids = {body[name] for name in ("message_id", "job_id") if body.get(name) is not None}
    if len(ids) > 1:
        raise Invalid("message_id and job_id name different ids; send one")
    if not ids and job_id:
        ids = {job_id}
    fields = {name: body[name] for name in JOB_FIELDS if body.get(name) is not None}
    chosen = ids.pop() if ids else None
    if chosen is not None:
        try:  # before any lookup: such an id may be another job's event stream
            check_job_id(chosen)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        fields["task_id"] = _new_job_id(backend, chosen, principal)
    placed = _placement(service, body.get("payload"), fields, customer_id, backend)
    pool, job_class = placed.pool, placed.class_signature
    if placed.pool_named and not principal.admin and not _pool_exists(backend, pool):
        raise Invalid(f"pool {pool!r} does not exist: a pool is made by a worker serving it, "
                      "the pools file, or a submit with an admin token")
    routing = placed.routing
    if pin is not None:  # an idempotent submit: where its first attempt was placed
        pool, routing = pin(pool, routing)
    if routing is not None:  # decided once: the submit files it where admitted
        fields["pool"], fields["routing"] = pool, routing
    elif pool != placed.pool:  # the first attempt's pool, where routing is off or not
        fields["pool"] = pool
    while True:
        try:
            job_id = _file(service, body.get("payload"), customer_id, fields, principal,
                           backend, limits, pool, job_class)
            return Submitted(job_id, pool, lookup_warnings(
                backend, pool, placed.pool_named, required_models(placed.job_class)))
        except Invalid as exc:
            # Another customer took the chosen id between the check and the filing: the
            # job is scoped, as it would have been a moment later (once: the scoped id
            # taken too is this customer's own job, a 409).
            if exc.status != 409 or principal.admin or fields.get("task_id") != chosen:
                raise
            scoped = _new_job_id(backend, chosen, principal)
            if scoped == chosen:  # the customer's own job has it, or is being filed
                raise
            fields["task_id"] = scoped


def _file(service: str, payload: Any, customer_id: str | None, fields: dict[str, Any],
          principal: Principal, backend: Backend, limits: Limits | None, pool: str,
          job_class: str) -> str:
    """Admit the job under the customer's limits and file it; its id. Invalid (409 for a
    taken id, 400) or Limited, having written nothing."""
    if limits is not None:
        if "task_id" not in fields:  # made here: no other job can have it (no reservation)
            fields["task_id"] = str(uuid.uuid4())
            fields["headers"] = {NEW_ID_HEADER: fields["task_id"]}
        limits.admit_job(principal, pool, fields["task_id"], job_class)
    try:
        result = producer.submit(service, payload, customer_id=customer_id,
                                 app=backend.celery, **fields)
    except BaseException as exc:
        if limits is not None:  # refused after admission: give the place back
            with contextlib.suppress(Exception):  # else pruned once seen missing
                limits.forget_job(principal, pool, fields["task_id"], job_class)
        if isinstance(exc, InvalidJob):
            raise Invalid(str(exc), 409 if "already exists" in str(exc) else 400) from None
        raise
    return result.id
