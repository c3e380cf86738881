"""Celery's queue of a task, which in EMP is the job's pool.

A worker consumes pools (``emp worker -Q gpu``), so the queue a Celery user
names (``apply_async(queue=...)``, the task's ``queue`` option, a route of
``task_routes``) is where the job must be filed, record and message alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

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


class NamedPool(NamedTuple):
    """A pool a submit names (None: not named there), with what names it, for messages."""

    named_by: str
    pool: str | None


def named_pools(task: Any, args: Any, kwargs: Any, options: dict[str, Any],
                fields: Mapping[str, Any], routes: bool = True) -> dict[str, NamedPool]:
    """Each pool a submit of ``task`` is filed by, keyed by where it is named: ``queue``
    (the call's ``queue``), ``pool`` and ``requirements.pool`` (the job keywords, in
    ``fields``), ``task queue`` (the task's ``queue`` option) and ``route`` (a
    ``task_routes`` route, given ``options``). A submit (``EmpTask.job_spec``) files by
    the call's queue, else the task's (refusing another ``pool``), else by ``pool`` or
    ``requirements.pool`` (``JobSpec``), else the route. With ``routes`` false the route
    is asked only when none of the others names a pool (it counts only then). A replace
    checks them all (``replacement_options``): Celery would send the replacement where
    they say."""
    requirements = fields.get("requirements")
    named = {
        "queue": NamedPool("queue=", queue_name(options.get("queue"))),
        "pool": NamedPool("pool=", fields.get("pool")),
        "requirements.pool": NamedPool(
            "requirements.pool",
            requirements.get("pool") if isinstance(requirements, Mapping) else None),
        "task queue": NamedPool(f"the queue option of task {task.name!r}",
                                queue_name(getattr(task, "queue", None))),
    }
    pool_given = any(n.pool is not None for n in named.values()) or (
        isinstance(requirements, Mapping) and "pool" in requirements)
    if routes or not pool_given:
        named["route"] = NamedPool(f"task_routes for {task.name!r}",
                                   routed_queue(task, args, kwargs, options))
    return named


def skip_redundant_declare(app: Any, options: dict[str, Any]) -> None:
    """Publish to a pool's known direct queue without Celery's per-publish declare.

    Celery declares a send's queue on every publish; kombu binds a fresh copy of the
    queue to the channel each time only to find the declaration cached: about 60 µs of
    a ~450 µs submit. Over the direct exchange Celery sends to the anonymous exchange
    with the queue's name (our transport files the job in that pool), so the binding a
    declare writes is read by no delivery. A queue not yet known to the app, one on
    another exchange type, an explicit ``exchange`` or ``declare`` keep Celery's way.
    """
    if "declare" in options or options.get("exchange"):
        return
    queue = app.amqp.queues.get(queue_name(options.get("queue")) or "")
    if queue is not None and getattr(queue.exchange, "type", None) == "direct":
        options["declare"] = []
