"""Per-customer job ids: a customer's chosen id never meets another customer's job.

A customer may choose its jobs' ids (``message_id``). When another customer
already holds a job under that id, the new job is stored as
``<id>~<customer>`` and shown to its customer as ``<id>``: in the submit's
answer, the record, listings, socket events and webhook payloads. A customer
token's ``<id>`` finds its own job either way. So a submit with another
customer's id is answered as one with an unknown id is (201), and nothing
tells a customer whether someone else's id exists. Ids sent through the API
cannot contain ``~`` (the schema's name pattern), so no one can take
another customer's scoped id. Operators (admin tokens, the monitor) see the
stored id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capability_router.errors import JobNotFound
from emp_tasks import producer

if TYPE_CHECKING:
    from celery import Celery

    from webapp.auth import Principal

#: Between a chosen id and its customer in a stored id; refused in ids sent by clients.
SEPARATOR = "~"


def scoped(job_id: str, customer_id: str) -> str:
    """The stored id of ``customer_id``'s job ``job_id`` when another customer has that id."""
    return f"{job_id}{SEPARATOR}{customer_id}"


def shown(job_id: str, customer_id: str | None) -> str:
    """The id ``customer_id`` knows its job by (the stored id without its own suffix)."""
    suffix = f"{SEPARATOR}{customer_id}" if customer_id else None
    if suffix and job_id.endswith(suffix) and len(job_id) > len(suffix):
        return job_id[:-len(suffix)]
    return job_id


def candidates(job_id: str, customer_id: str | None) -> list[str]:
    """Stored ids a caller's ``job_id`` may name: the id itself, then, for a customer,
    its scoped form (the caller must still be allowed to see the record found)."""
    return [job_id, scoped(job_id, customer_id)] if customer_id else [job_id]


def shown_record(record: dict[str, Any], customer_id: str | None) -> dict[str, Any]:
    """``record`` as its customer sees it: its ``job_id`` without the scope suffix."""
    job_id = record.get("job_id")
    if not customer_id or not isinstance(job_id, str):
        return record
    public = shown(job_id, customer_id)
    return record if public == job_id else {**record, "job_id": public}


def visible_record(job_id: str, principal: Principal, app: Celery) -> dict[str, Any] | None:
    """The record of the job ``principal`` knows as ``job_id`` (stored under that id or
    scoped to the caller's customer), its ``job_id`` the stored id; None when there is
    none the caller may see, the same for another customer's job as for no job."""
    for stored in candidates(job_id, principal.id_scope):
        try:
            record = producer.get_job(stored, app=app)
        except JobNotFound:
            continue
        if principal.may_see(record.get("customer_id")):
            record.setdefault("job_id", stored)
            return record
    return None
