"""The Celery request of a job no run holds, rebuilt from the message its record keeps.

A job the queue ends without a run (cancelled while pending or waiting for a
retry, or failed once its attempts ran out) has its outcome stored by the
producer or by a worker's lease renewal, not by a run. Stored without the
request, Celery could not do what it does at a run's end: count the job's
part of a chord (the chord's body then neither ran nor failed, and its
``get()`` waited for ever), fail the steps chained after it, call its
``link_error``. The request is what a worker would have built from the same
message (``celery.worker.request.Request._context``).
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery
from celery.app.task import Context

from capability_router.keys import Keys
from capability_router.message_body import plain_body
from emp_tasks.connection import get_client


def stored_request(app: Celery, namespace: str, job_id: str) -> Context | None:
    """The request of job ``job_id`` as a worker would see it; None when its record
    keeps no message Celery's protocol 2 can read (then only its own state is stored)."""
    raw = get_client(app.conf.broker_url).hget(Keys(namespace).job(job_id), "message")
    try:
        message = json.loads(raw) if raw else None
        if not isinstance(message, dict) or not plain_body(message):
            return None
        body = json.loads(message["body"])
    except (ValueError, TypeError):
        return None
    headers = message.get("headers")
    if not isinstance(headers, dict) or not isinstance(body, list) or len(body) != 3:
        return None
    args, kwargs, embed = body
    request: dict[str, Any] = {**headers, "args": args, "kwargs": kwargs,
                               **(embed if isinstance(embed, dict) else {})}
    request.update(id=job_id, delivery_info={"is_eager": False}, called_directly=False)
    return Context(request)
