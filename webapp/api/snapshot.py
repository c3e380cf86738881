"""The monitor's ``full_state_snapshot`` and ``system_stats``, from the indexes.

Reads the per-status listing indexes and the worker registry; never scans
the keyspace. Active and pending lists are capped; finished jobs are paged.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from capability_router.keys import Keys
from emp_tasks.producer import decode_record
from webapp.api import listing
from webapp.api.events import EventHub
from webapp.api.listing import STATUSES
from webapp.backend import Backend

#: Most pending or active jobs a snapshot lists.
LIVE_LIMIT = 200
#: Seconds a process's ``system_stats`` is shared by its monitor sockets.
STATS_MAX_AGE_SECONDS = 1.0
_stats_lock = threading.Lock()
_stats: dict[int, tuple[float, dict[str, Any]]] = {}


def _jobs(backend: Backend, namespaces: list[str], status: str, start: int,
          count: int) -> list[dict[str, Any]]:
    client = backend.redis
    found: list[tuple[float, str, str]] = []
    for namespace in namespaces:
        key = Keys(namespace).prefix + "status:" + status
        for job_id, score in client.zrevrange(key, 0, start + count - 1, withscores=True):
            found.append((score, namespace, job_id))
    found.sort(reverse=True)
    page = found[start:start + count]
    with client.pipeline(transaction=False) as pipe:
        for _, namespace, job_id in page:
            pipe.hgetall(Keys(namespace).job(job_id))
        records = pipe.execute()
    return [decode_record(r) for r in records if r]


def status_counts(backend: Backend, namespaces: list[str]) -> dict[str, int]:
    """Jobs per state over every pool."""
    totals = dict.fromkeys(STATUSES, 0)
    for counts in listing.status_counts(backend.redis, namespaces).values():
        for status, count in counts.items():
            totals[status] += count
    return totals


def system_stats(backend: Backend, hub: EventHub, namespaces: list[str] | None = None,
                 workers: list[dict[str, Any]] | None = None,
                 counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Counts for the monitor; a snapshot passes what it already read."""
    namespaces = namespaces if namespaces is not None else hub.namespaces()
    workers = workers if workers is not None else backend.registry.workers()
    return {
        "jobs": counts if counts is not None else status_counts(backend, namespaces),
        "workers": {"total": len(workers),
                    "busy": sum(1 for w in workers if w.get("status") == "busy")},
        "machines": len({w.get("machine_id") for w in workers}),
        "connections": hub.connection_counts(),
        "pools": namespaces,
    }


def shared_system_stats(backend: Backend, hub: EventHub) -> dict[str, Any]:
    """``system_stats`` at most ``STATS_MAX_AGE_SECONDS`` old: every monitor socket of a
    process ticks every 5 s, and each tick's reads need not be its own."""
    now = time.monotonic()
    with _stats_lock:
        cached = _stats.get(id(hub))
    if cached is not None and now - cached[0] < STATS_MAX_AGE_SECONDS:
        return cached[1]
    stats = system_stats(backend, hub)
    with _stats_lock:
        _stats[id(hub)] = (now, stats)
    return stats


def full_state(backend: Backend, hub: EventHub, page: int, page_size: int) -> dict[str, Any]:
    namespaces = hub.namespaces()
    workers = backend.registry.workers()
    machines: dict[str, dict[str, Any]] = {}
    for worker in workers:
        machine_id = worker.get("machine_id") or ""
        machine = machines.setdefault(machine_id, {"machine_id": machine_id, "workers": [],
                                                   "last_seen": 0})
        machine["workers"].append(worker["worker_id"])
        machine["last_seen"] = max(machine["last_seen"], worker.get("last_seen") or 0)
    start = (page - 1) * page_size
    active = (_jobs(backend, namespaces, "in_progress", 0, LIVE_LIMIT)
              + _jobs(backend, namespaces, "assigned", 0, LIVE_LIMIT))
    counts = status_counts(backend, namespaces)
    return {
        "workers": workers,
        "machines": list(machines.values()),
        "jobs": {
            "pending": _jobs(backend, namespaces, "pending", 0, LIVE_LIMIT),
            "active": active[:LIVE_LIMIT],
            "completed": _jobs(backend, namespaces, "completed", start, page_size),
            "failed": _jobs(backend, namespaces, "failed", start, page_size),
        },
        "finishedJobsPagination": {"page": page, "pageSize": page_size,
                                   "totalCompleted": counts["completed"],
                                   "totalFailed": counts["failed"]},
        "system_stats": system_stats(backend, hub, namespaces, workers, counts),
    }
