"""A hard time limit recorded on the job before Celery stores it.

Past a task's ``time_limit`` the worker's main process kills the pool process
running it, and Celery's ``Request.on_timeout`` stores FAILURE
(``TimeLimitExceeded``) in the result backend and calls the failure hooks. The
job record learnt of it only from the run's acknowledgement, which rides on the
worker's next claim: ``AsyncResult.get()`` raised while ``get_job`` said
``in_progress`` for a while (0.16 s measured). Every other outcome is recorded
before Celery stores the result (``EmpTask.__call__``); this keeps that order
for the one outcome no run can record itself.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from billiard.exceptions import TimeLimitExceeded
from celery.worker import state as worker_state
from celery.worker.request import Request

from capability_router.errors import EmpError
from capability_router.transport import parse_tag
from emp_tasks.connection import get_functions

logger = logging.getLogger(__name__)


class EmpRequest(Request):
    """Celery's request of a job run; a hard time limit fails the job first.

    billiard reports the limit twice, as the run's error (``on_failure``, which stores
    FAILURE) and then as a timeout (``on_timeout``, which stores it again and calls the
    hooks); whichever comes first records it, once.
    """

    _time_limit_recorded = False

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback
        if isinstance(exc, TimeLimitExceeded):
            self._record_time_limit(exc.args[0] if exc.args else self.task.time_limit)
        super().on_failure(exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._record_time_limit(timeout)
        super().on_timeout(soft, timeout)

    def _record_time_limit(self, timeout: Any) -> None:
        if not self._time_limit_recorded and not worker_state.should_terminate:
            self._time_limit_recorded = True
            record_hard_time_limit(self, timeout)


def record_hard_time_limit(request: Any, timeout: Any) -> None:
    """Fail the attempt ``request`` ran (fenced: nothing if another holds the job, or it
    ended). A Redis error leaves it to the acknowledgement, as before."""
    parsed = parse_tag(getattr(request.message, "delivery_tag", None))
    if parsed is None:  # not a job claimed from the queue (eager, another broker)
        return
    namespace, job_id, attempt = parsed
    functions = get_functions(request.task.app.conf.broker_url, namespace)
    try:
        functions.fail(job_id, attempt, f"TimeLimitExceeded: hard time limit ({timeout} s) "
                                        "exceeded; the run was killed")
    except (EmpError, redis.RedisError) as exc:
        logger.warning("job %s: could not record its hard time limit now (%s); its "
                       "acknowledgement will", job_id, exc)
