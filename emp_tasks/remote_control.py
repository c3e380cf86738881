"""A worker remote-control command: forget that job ids were revoked.

Celery keeps every revoked task id in ``celery.worker.state.revoked`` and
silently discards any later message with that id. A job cancelled with
``terminate`` is revoked; when it is resubmitted under the same id, every
worker must first forget the revoke, or the new run would be dropped
unseen. Importing this module registers the command (``emp_tasks.app`` does).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import control_command, ok

#: Name of the command workers answer.
FORGET_REVOKED = "emp_forget_revoked"


@control_command(variadic="task_id", signature="[id1 [id2 [... [idN]]]]")
def emp_forget_revoked(state: Any, task_id: Any = None, **kwargs: Any) -> dict[str, str]:
    """Drop the ids from this worker's revoked set, so their next message runs."""
    ids = set(maybe_list(task_id) or [])
    for job_id in ids:
        worker_state.revoked.discard(job_id)
    return ok(f"forgot revoke of {len(ids)} task(s)")


def forget_revoked(app: Celery, job_ids: list[str], workers: int, timeout: float = 1.0) -> int:
    """Tell every worker to forget the revokes of ``job_ids``; returns how many answered.

    ``workers`` is how many live workers to wait for (answers end the wait
    early); ``timeout`` bounds it, seconds, when some worker stays silent.
    """
    if workers <= 0 or not job_ids:
        return 0
    replies = app.control.broadcast(
        FORGET_REVOKED, arguments={"task_id": list(job_ids)}, reply=True,
        timeout=timeout, limit=workers,
    )
    return len(replies or [])
