"""Celery's queue of a task, which in EMP is the job's pool.

A worker consumes pools (``emp worker -Q gpu``), so the queue a Celery user
names (``apply_async(queue=...)``, the task's ``queue`` option, a route of
``task_routes``) is where the job must be filed, record and message alike.
"""

from __future__ import annotations

from typing import Any

from capability_router.router import CapabilityRouter


def queue_name(queue: Any) -> str | None:
    """The name of a ``queue`` option: a name, or a kombu ``Queue``; None when unset."""
    name = getattr(queue, "name", queue)
    return str(name) if name else None


def routed_queue(task: Any, args: Any, kwargs: Any, options: dict[str, Any]) -> str | None:
    """The queue the app's ``task_routes`` give ``task``, as Celery's router reads them
    (a mapping by name or glob, a router function or object); None when none does.
    EMP's own ``CapabilityRouter`` is passed over: it routes by the pool chosen here."""
    router = task.app.amqp.router
    for route in router.routes:
        if isinstance(route, CapabilityRouter):
            continue
        found = router.query_router(route, task.name, args, kwargs, options, task)
        if found:
            return queue_name(found.get("queue") if isinstance(found, dict) else found)
    return None
