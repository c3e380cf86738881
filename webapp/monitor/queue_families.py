"""Pending work per requirement family, for the Prometheus scrape: O(families), not O(classes).

Every request is its own workflow, hence its own class, so reading the queue
class by class (``queue.queue_summary``, what the Queue view shows) made a
scrape cost grow with the workflows waiting (20,000: about 1.4 s). The
library keeps a pending index per family (``emp_family_summary``: depth and
oldest effective time), so a scrape reads a few keys per family. Classes are
read only for a family some live *restricted* worker (its own workflow, or
denied customers) can serve, since such a worker serves some of the family's
classes and not others; the figures are those ``metrics.family_rows`` makes
of ``queue_summary``'s class rows.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from capability_router.functions import QueueFunctions, redis_now_ms
from capability_router.keys import Keys, known_namespaces
from webapp.api import listing
from webapp.monitor.queue import describe_class, live_workers, restrictions_allow


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def is_restricted(record: dict[str, Any]) -> bool:
    """A worker serving only its own workflow, or not some customers: it serves some
    classes of a family and not others (``restrictions_allow``)."""
    profile = record.get("profile") or {}
    return bool(profile.get("workflow_id")
                or (profile.get("customer_access") or {}).get("denied_customers"))


def queue_families(client: redis.Redis, now_ms: int | None = None) -> dict[str, Any]:
    """Pending work of every pool, by family, with how many live workers can serve it.

    Returns ``{"now_ms", "families": [row...], "pools": [{"pool", "jobs"}...],
    "workers": {"idle", "busy", "service_unhealthy", "silent"}}``. A family row: ``pool``,
    ``family``, ``service``, ``requirements`` (its conditions, as
    ``describe_class`` words them), ``strict``, ``pending``,
    ``oldest_age_seconds`` and ``workers`` (live workers able to serve its least
    served pending class).
    """
    pools = known_namespaces(client)
    serving, records, counts = live_workers(client, pools)
    if now_ms is None:
        now_ms = redis_now_ms(client)
    status_counts = listing.status_counts(client, pools)
    pending = {pool: QueueFunctions(client, pool).family_summary() for pool in pools}

    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            if pending[pool]:
                signatures = [f.family for f in pending[pool]]
                pipe.hmget(Keys(pool).families, signatures)
                pipe.hmget(Keys(pool).classes, signatures)  # a class filed without a family
                for psig in serving[pool]:
                    pipe.smembers(Keys(pool).compat(psig))
        answers = iter(pipe.execute())

    rows: list[dict[str, Any]] = []
    for pool in pools:
        if not pending[pool]:
            continue
        definitions, own_classes = next(answers), next(answers)
        compat = {psig: {_text(f) for f in next(answers)} for psig in serving[pool]}
        able = {family.family: [records[w] for psig, served in compat.items()
                                if family.family in served for w in serving[pool][psig]]
                for family in pending[pool]}
        least = _least_served(client, pool, able, [d is not None for d in definitions])
        for family, definition, own in zip(pending[pool], definitions, own_classes,
                                           strict=True):
            described = describe_class(json.loads(definition or own) if definition or own
                                       else None)
            rows.append({
                "pool": pool, "family": family.family, "service": described["service"],
                "requirements": described["requirements"], "strict": described["strict"],
                "pending": family.pending,
                "oldest_age_seconds": max(0, now_ms - family.oldest_ms) / 1000,
                "workers": least[family.family],
            })
    return {
        "now_ms": now_ms,
        "families": rows,
        "pools": [{"pool": pool, "jobs": status_counts[pool]} for pool in pools],
        "workers": counts,
    }


def _least_served(client: redis.Redis, pool: str, able: dict[str, list[dict[str, Any]]],
                  is_family: list[bool]) -> dict[str, int]:
    """Per family, the live workers able to serve its least served pending class.

    Unrestricted workers serve every class of a family they serve; only a family
    a restricted one serves has its pending classes read (one pipeline)."""
    least = {family: len(workers) for family, workers in able.items()}
    mixed = [(family, real) for (family, workers), real in zip(able.items(), is_family,
                                                                strict=True)
             if any(is_restricted(w) for w in workers)]
    if not mixed:
        return least
    keys = Keys(pool)
    with client.pipeline(transaction=False) as pipe:
        for family, real in mixed:
            if real:
                pipe.zrange(keys.family_classes_pending(family), 0, -1)
        members = iter(pipe.execute())
    classes = {family: [_text(c) for c in next(members)] if real else [family]
               for family, real in mixed}
    with client.pipeline(transaction=False) as pipe:
        for family, _ in mixed:
            pipe.hmget(keys.classes, classes[family] or [family])
        definitions = iter(pipe.execute())
    for family, _ in mixed:
        found = next(definitions)
        if classes[family]:
            least[family] = min(sum(1 for w in able[family]
                                    if restrictions_allow(w, json.loads(d) if d else None))
                                for d in found)
    return least


__all__ = ["is_restricted", "queue_families"]
