"""Turn a submitted body (REST or WebSocket) into a job, through Celery.

Temporary minimal version; the REST work brings the schema validation.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from capability_router.errors import EmpError
from emp_tasks import producer
from webapp.auth import Principal


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def submit_job(body: dict[str, Any], principal: Principal, celery: Celery) -> tuple[str, str]:
    """Submit ``body``; returns (job id, pool). Raises ApiError with a 4xx."""
    fields = dict(body)
    service = fields.pop("service_required", None) or fields.pop("job_type", None) \
        or fields.pop("type", None)
    if not isinstance(service, str):
        raise ApiError(400, "service_required: required string")
    customer = fields.pop("customer_id", None)
    if not principal.admin:
        if customer not in (None, principal.customer_id):
            raise ApiError(403, "customer_id: a customer token submits only its own jobs")
        customer = principal.customer_id
    try:
        result = producer.submit(service, fields.pop("payload", None),
                                 fields.pop("requirements", None),
                                 priority=fields.pop("priority", 50), customer_id=customer,
                                 app=celery, **fields)
    except (EmpError, TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return result.id, fields.get("pool") or "default"
