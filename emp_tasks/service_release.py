"""Give back a job whose service refused it, without spending the job's retries.

A worker's claim gate keeps it from claiming while its service is down, but
the service may go down between the gate's check and the job's start (a
ComfyUI restart takes 10-25 s). Such a job never ran, so counting it as a
retry would let one restart burn a job's whole retry budget. The attempt
releases the job instead (``emp_release``): back to pending at its old place,
after a short delay, with a ``job_released`` event saying why. A job released
``max_service_releases`` times counts its next refusals as usual, so a
service that is never healthy cannot keep a job forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.exceptions import Ignore

from machine.connectors.base import ServiceUnavailable

logger = logging.getLogger(__name__)

#: emp_release outcomes that gave the job back.
RELEASED = ("delayed", "queued")


def release_or_retry(task: Any, exc: ServiceUnavailable,
                     count: Callable[[Any, ServiceUnavailable], BaseException]) -> BaseException:
    """The exception to raise for a refused job: Ignore once released, else ``count(task, exc)``.

    ``count`` is the usual retry-or-fail rule, used when the job is run
    eagerly or has used up its releases ('exhausted'). An attempt the
    release refuses (cancelled, taken over) no longer owns the job: Ignore.
    """
    context = task.job
    if context is None:
        return count(task, exc)
    outcome = context.functions.release(context.job_id, context.attempt, str(exc))
    if outcome == "exhausted":
        return count(task, exc)
    if outcome in RELEASED:
        logger.warning("job %s released without spending a retry: %s", context.job_id, exc,
                       extra={"event": "job_released", "job_id": context.job_id})
        return Ignore(f"job {context.job_id} released: {exc}")
    return Ignore(f"job {context.job_id} is {outcome}; not counting its refusal")
