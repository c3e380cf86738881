"""Ends the queue decides with no run: stored in Celery's result backend.

A job whose attempts ran out while no run held it (the workers holding it
died, or rejected it, every time) is failed in Redis by the function library;
no task ran to store a FAILURE, so ``AsyncResult.get()`` waited for ever.
The library lists such jobs per pool; workers drain the lists with their lease
renewals (``Channel.report_gave_up``) and store each one's FAILURE here, with
the request its stored message holds, as Celery stores a lost run's end
(``WorkerLostError``): the steps chained after it fail too, a chord counts its
part (its body fails with ``ChordError``), its ``link_error`` is called. Without
the request a chain's last result or a chord's body stayed PENDING for good.
"""

from __future__ import annotations

from typing import Any

from capability_router.errors import QueueGaveUp
from capability_router.keys import Keys
from emp_tasks.connection import get_client
from emp_tasks.stored_request import stored_request


def store_gave_up(app: Any, namespace: str, job_id: str) -> None:
    """Store FAILURE (``QueueGaveUp`` with the record's reason) for a job the queue ended."""
    reason = get_client(app.conf.broker_url).hget(Keys(namespace).job(job_id), "last_error")
    app.backend.mark_as_failure(job_id, QueueGaveUp(reason or "the queue gave up on the job"),
                                request=stored_request(app, namespace, job_id))


class GaveUpReporter:
    """``store_gave_up`` for one app: the transport's ``on_job_gave_up`` option.

    A class, not a ``functools.partial``: the transport options are part of the
    worker's ``celery inspect stats`` reply (Flower's worker pages), which is JSON,
    and kombu's encoder writes an object through its ``__json__``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, namespace: str, job_id: str) -> None:
        store_gave_up(self.app, namespace, job_id)

    def __json__(self) -> str:
        return f"{__name__}.store_gave_up"
