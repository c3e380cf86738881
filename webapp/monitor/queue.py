"""The queue view's data: pending work per pool and class, and who can serve it.

An operator's first questions are "what is waiting, for how long, and can
anyone run it?". A class nobody alive can serve (say it needs 80 GB and only
24 GB workers are up) waits forever without any error, so it is flagged
``unservable`` and sorted first.

Reads are a fixed number of round trips however many pools and classes
there are: the pool list, the worker registry, the clock, the status counts,
each pool's ``emp_queue_summary`` (one call per 100 classes, so Redis is
never held long), and one pipeline with every class's definition and the
set of classes each live worker profile can serve.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from capability_router.errors import InvalidProfile
from capability_router.functions import (
    QueueFunctions,
)
from capability_router.keys import Keys, known_namespaces
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from webapp.api import listing

logger = logging.getLogger(__name__)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_value_text(v) for v in value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _condition(path: str, want: Any) -> str:
    """One requirement as the matcher reads it (see emp.lua ``capability_ok``)."""
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        return f"{path} >= {want}"
    if isinstance(want, list):
        return f"{path} includes {_value_text(want)}"
    return f"{path} = {_value_text(want)}"


def describe_class(job_class: dict[str, Any] | None) -> dict[str, Any]:
    """A normalized requirement class in readable form.

    ``requirements`` lists one condition per line, e.g. ``hardware.gpu_memory_gb
    >= 80``, ``models.comfyui includes sdxl``, ``not region = us``; the
    customer and workflow the class is tied to come separately.
    """
    if not job_class:
        return {"service": "unknown", "customer_id": None, "workflow_id": None,
                "strict": False, "requirements": []}
    conditions = [_condition(p, w) for p, w in sorted((job_class.get("pos") or {}).items())]
    conditions += ["not " + _condition(p, w)
                   for p, w in sorted((job_class.get("neg") or {}).items())]
    customer = job_class.get("customer_id")
    if customer and job_class.get("strict"):
        conditions.append(f"isolated for customer {customer}")
    return {
        "service": job_class.get("service") or "unknown",
        "customer_id": customer,
        "workflow_id": job_class.get("workflow_id"),
        "strict": bool(job_class.get("strict")),
        "requirements": conditions,
    }


def profile_signature(record: dict[str, Any]) -> str | None:
    """The profile signature a worker registered, from its registry record.

    The registry keeps ``WorkerProfile.as_dict()``; rebuilding the profile
    from it gives the same normalized form, hence the same signature as the
    one in the pool's ``profiles`` and ``compat-rev:`` sets.
    """
    try:
        return WorkerProfile.from_dict(record.get("profile") or {}).signature
    except (InvalidProfile, TypeError, ValueError):
        logger.warning("worker %s has an unreadable profile in the registry",
                       record.get("worker_id"))
        return None


def queue_summary(client: redis.Redis, now_ms: int | None = None) -> dict[str, Any]:
    """Pending work of every pool, by class, with the live workers able to serve it.

    Returns ``{"now_ms", "classes": [row...], "pools": [pool...], "workers":
    {"total", "idle", "busy"}}``. A class row: ``pool``, ``class`` (signature),
    ``service``, ``customer_id``, ``workflow_id``, ``strict``, ``requirements``
    (readable conditions), ``pending``, ``oldest_ms``, ``oldest_age_seconds``,
    ``head_score``, ``workers`` (ids of live workers that can serve it) and
    ``unservable``; unservable classes first, then by pending count, largest
    first. A pool: ``pool``, ``pending``, ``delayed``, ``classes``,
    ``unservable_classes``, ``jobs`` (``{status: count}``). ``now_ms``
    defaults to the Redis server's clock.
    """
    pools = known_namespaces(client)
    workers = WorkerRegistry(client).workers()
    # Live profile signatures per pool, and the workers that share each.
    serving: dict[str, dict[str, list[str]]] = {pool: {} for pool in pools}
    idle = busy = 0
    for record in workers:
        if record.get("status") == "busy":
            busy += 1
        else:
            idle += 1
        psig = profile_signature(record)
        if psig is None:
            continue
        for pool in record.get("pools") or []:
            if pool in serving:
                serving[pool].setdefault(psig, []).append(_text(record["worker_id"]))
    psigs = {pool: list(serving[pool]) for pool in pools}

    if now_ms is None:
        seconds, micros = client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
    status_counts = listing.status_counts(client, pools)
    summaries = {pool: QueueFunctions(client, pool).queue_summary() for pool in pools}

    # Which classes each live profile can serve: one set per profile, not one call per class.
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            signatures = [c.signature for c in summaries[pool].classes]
            if signatures:
                pipe.hmget(Keys(pool).classes, signatures)
                for psig in psigs[pool]:
                    pipe.smembers(Keys(pool).compat(psig))
        answers = iter(pipe.execute())

    rows: list[dict[str, Any]] = []
    pool_rows: list[dict[str, Any]] = []
    for pool in pools:
        summary = summaries[pool]
        classes = summary.classes
        definitions, compat = [], {}
        if classes:
            definitions = next(answers)
            compat = {psig: {_text(c) for c in next(answers)} for psig in psigs[pool]}
        pool_classes: list[dict[str, Any]] = []
        for pending_class, definition in zip(classes, definitions, strict=True):
            able = [worker for psig, served in compat.items()
                    if pending_class.signature in served for worker in serving[pool][psig]]
            job_class = json.loads(definition) if definition else None
            pool_classes.append({
                "pool": pool,
                "class": pending_class.signature,
                **describe_class(job_class),
                "pending": pending_class.pending,
                "oldest_ms": pending_class.oldest_ms,
                "oldest_age_seconds": max(0, now_ms - pending_class.oldest_ms) / 1000,
                "head_score": pending_class.head_score,
                "workers": sorted(able),
                "unservable": not able,
            })
        rows += pool_classes
        pool_rows.append({
            "pool": pool,
            "pending": sum(c.pending for c in classes),
            "delayed": summary.delayed,
            "classes": len(classes),
            "unservable_classes": sum(1 for c in pool_classes if c["unservable"]),
            "jobs": status_counts[pool],
        })
    rows.sort(key=lambda r: (not r["unservable"], -r["pending"], r["pool"], r["class"]))
    return {
        "now_ms": now_ms,
        "classes": rows,
        "pools": pool_rows,
        "workers": {"total": idle + busy, "idle": idle, "busy": busy},
    }


__all__ = ["describe_class", "profile_signature", "queue_summary"]
