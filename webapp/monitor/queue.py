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
from capability_router.functions import QueueFunctions, redis_now_ms
from capability_router.keys import Keys, known_namespaces
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from webapp.api import listing
from webapp.monitor.liveness import heard_from, silent

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


def restrictions_allow(record: dict[str, Any], job_class: dict[str, Any] | None) -> bool:
    """A worker's own workflow and denied customers against one class.

    The pool's compatibility sets hold class families (what matching reads:
    ``capability_router.requirements.family_of``), not classes, so these two
    per-worker restrictions are checked here, as the claim checks them.
    """
    profile = record.get("profile") or {}
    workflow = profile.get("workflow_id")
    if workflow and workflow != (job_class or {}).get("workflow_id"):
        return False
    denied = (profile.get("customer_access") or {}).get("denied_customers") or []
    customer = (job_class or {}).get("customer_id")
    return not (customer and customer in denied)


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


def live_workers(client: redis.Redis, pools: list[str]) -> tuple[
        dict[str, dict[str, list[str]]], dict[str, dict[str, Any]], dict[str, int]]:
    """The registry's live workers: per pool, profile signature -> ids of the workers
    sharing it; worker id -> registry record; and counts ``idle``, ``busy``,
    ``service_unhealthy`` (a worker whose service is down serves nothing) and ``silent``
    (no heartbeat for a lease: killed or hung, its record not yet expired; serves nothing
    here, ``liveness.silent``)."""
    serving: dict[str, dict[str, list[str]]] = {pool: {} for pool in pools}
    records: dict[str, dict[str, Any]] = {}
    counts = {"idle": 0, "busy": 0, "service_unhealthy": 0, "silent": 0}
    now_ms = redis_now_ms(client)  # the clock heartbeats are stamped with
    for record in WorkerRegistry(client).workers():
        status = record.get("status")
        if silent(record, now_ms):
            counts["silent"] += 1
            continue
        if status == "service_unhealthy":
            # Its claim gate is closed: it serves nothing until its service is back.
            counts["service_unhealthy"] += 1
            continue
        counts["busy" if status == "busy" else "idle"] += 1
        psig = profile_signature(record)
        if psig is None:
            continue
        records[_text(record["worker_id"])] = record
        for pool in record.get("pools") or []:
            if pool in serving:
                serving[pool].setdefault(psig, []).append(_text(record["worker_id"]))
    return serving, records, counts


def queue_summary(client: redis.Redis, now_ms: int | None = None) -> dict[str, Any]:
    """Pending work of every pool, by class, with the live workers able to serve it.

    Returns ``{"now_ms", "classes": [row...], "pools": [pool...], "workers":
    {"total", "idle", "busy", "service_unhealthy", "silent"}}`` (a worker whose service
    is down serves no class; nor does a ``silent`` one, a lease without a heartbeat, which
    ``total`` leaves out). A class row: ``pool``, ``class`` (signature), ``family``
    (its family's signature: what matching reads), ``service``, ``customer_id``,
    ``workflow_id``, ``strict``, ``requirements`` (readable conditions),
    ``pending``, ``oldest_ms``, ``oldest_age_seconds``,
    ``head_score``, ``workers`` (ids of live workers that can serve it) and
    ``unservable``; unservable classes first, then by pending count, largest
    first. A pool: ``pool``, ``pending``, ``delayed``, ``classes``,
    ``unservable_classes``, ``jobs`` (``{status: count}``). ``now_ms``
    defaults to the Redis server's clock.
    """
    pools = known_namespaces(client)
    serving, records, counts = live_workers(client, pools)
    psigs = {pool: list(serving[pool]) for pool in pools}

    if now_ms is None:
        now_ms = redis_now_ms(client)
    status_counts = listing.status_counts(client, pools)
    summaries = {pool: QueueFunctions(client, pool).queue_summary() for pool in pools}

    # Which classes each live profile can serve: one set per profile, not one call per class.
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            signatures = [c.signature for c in summaries[pool].classes]
            if signatures:
                pipe.hmget(Keys(pool).classes, signatures)
                pipe.hmget(Keys(pool).class_family, signatures)
                for psig in psigs[pool]:
                    pipe.smembers(Keys(pool).compat(psig))
        answers = iter(pipe.execute())

    rows: list[dict[str, Any]] = []
    pool_rows: list[dict[str, Any]] = []
    for pool in pools:
        summary = summaries[pool]
        classes = summary.classes
        definitions, families, compat = [], [], {}
        if classes:
            definitions, families = next(answers), next(answers)
            compat = {psig: {_text(c) for c in next(answers)} for psig in psigs[pool]}
        pool_classes: list[dict[str, Any]] = []
        for pending_class, definition, family in zip(classes, definitions, families,
                                                     strict=True):
            job_class = json.loads(definition) if definition else None
            family = _text(family) if family else pending_class.signature
            able = [worker for psig, served in compat.items() if family in served
                    for worker in serving[pool][psig]
                    if restrictions_allow(records[worker], job_class)]
            pool_classes.append({
                "pool": pool,
                "class": pending_class.signature,
                "family": family,
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
        "workers": {"total": sum(counts.values()) - counts["silent"], **counts},
    }


def _capabilities_for(record: dict[str, Any], job_class: dict[str, Any]) -> str:
    """What one live worker has of what the class asks: its services, then each asked
    capability's value (``hardware.gpu_memory_gb 24``), its customer isolation if asked."""
    try:
        profile = WorkerProfile.from_dict(record.get("profile") or {}).normalized()
    except (InvalidProfile, TypeError, ValueError):
        return "an unreadable profile"
    service = job_class.get("service")
    if service not in profile["services"]:
        return f"offers only {', '.join(profile['services'])}" if profile["services"] \
            else "offers no service"
    caps = profile["caps"]
    paths = sorted({*(job_class.get("pos") or {}), *(job_class.get("neg") or {})})
    parts = [f"{path} {_value_text(caps[path])}" if path in caps else f"no {path}"
             for path in paths]
    if job_class.get("strict") and job_class.get("customer_id"):
        allowed = ", ".join(profile["allowed"]) or "no customer"
        parts.append(f"isolation {profile['isolation']} for {allowed}")
    if profile.get("workflow_id") and profile["workflow_id"] != job_class.get("workflow_id"):
        parts.append(f"only workflow {profile['workflow_id']}")
    return "; ".join(parts) or "offers " + str(service)


def class_servability(client: redis.Redis, pool: str, signature: str) -> dict[str, Any]:
    """Whether a live worker can serve one requirement class, and if not, why.

    Returns ``{"servable", "workers" (ids that can), "requirements" (readable
    conditions), "reason"}``; ``reason`` names what the class needs and what
    each live worker of the pool has of it, e.g. ``needs simulation with
    hardware.gpu_memory_gb >= 80; live workers in pool default: w1
    (hardware.gpu_memory_gb 24)``. Reads the pool's compatibility sets, as
    the Queue view does. A worker silent for a lease (``liveness.silent``) is not live here.
    """
    keys = Keys(pool)
    now_ms = redis_now_ms(client)
    live = [w for w in heard_from(WorkerRegistry(client).workers(), now_ms)
            if pool in (w.get("pools") or [])]
    signatures = [profile_signature(w) for w in live]
    with client.pipeline(transaction=False) as pipe:
        pipe.hget(keys.classes, signature)
        pipe.hget(keys.class_family, signature)
        definition, family = pipe.execute()
    family = _text(family) if family else signature
    with client.pipeline(transaction=False) as pipe:
        for psig in signatures:
            pipe.sismember(keys.compat(psig or "-"), family)
        served = pipe.execute()
    job_class = json.loads(definition) if definition else {}
    served = [yes and restrictions_allow(w, job_class) for w, yes in zip(live, served,
                                                                         strict=True)]
    described = describe_class(job_class or None)
    # A worker whose service is down (its claim gate closed) serves nothing until it is back.
    down = {_text(w["worker_id"]): w.get("status_reason") or "its service is down"
            for w in live if w.get("status") == "service_unhealthy"}
    able = sorted(_text(w["worker_id"]) for w, psig, yes in zip(live, signatures, served,
                                                                 strict=True)
                  if psig and yes and _text(w["worker_id"]) not in down)
    needs = f"{described['service']}" + (f" with {', '.join(described['requirements'])}"
                                         if described["requirements"] else "")
    if described["customer_id"] and not described["strict"]:
        needs += f" for customer {described['customer_id']}"
    if able:
        reason = f"live workers that can serve it: {', '.join(able)}"
    elif not live:
        reason = (f"No live worker can serve this job: it needs {needs}, and no worker is "
                  f"registered in pool {pool}.")
    else:
        ids = {_text(w["worker_id"]): w for w in live}
        have = "; ".join(f"{wid} ({down.get(wid) or _capabilities_for(ids[wid], job_class)})"
                         for wid in sorted(ids))
        reason = (f"No live worker can serve this job: it needs {needs}. Live workers in "
                  f"pool {pool}: {have}. It waits until such a worker joins or it is "
                  "cancelled.")
    return {"servable": bool(able), "workers": able,
            "requirements": described["requirements"], "reason": reason}


__all__ = ["class_servability", "describe_class", "live_workers", "profile_signature",
           "queue_summary"]
