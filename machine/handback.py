"""Return to pending, at once, the jobs a dead worker process of this machine held.

A SIGKILLed worker's jobs stayed ``in_progress`` with frozen progress until their
lease ran out, while supervisor had already started its program again. The machine
knows when the process died (supervisord says so), so it requeues them through
``emp_requeue``, the path of an expired lease: the attempt counts against the
job's allowance exactly as lease expiry would count it.

Fencing. The new process of the program has the same worker id, so a job is the
dead process's only when its worker id is that worker's *and* it was assigned
before ``before_ms``, a Redis-clock time no later than the start of the program's
current process (see ``MachineRuntime._hand_back``). ``emp_requeue`` is fenced by
attempt, so a job that moved on between the read and the requeue (requeued,
claimed by another worker, ended) is left alone. A job claimed in the dead
process's last moments may be left to its lease.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from capability_router.functions import QueueFunctions, redis_now_ms
from capability_router.keys import Keys, known_namespaces


def hand_back_jobs(client: redis.Redis, worker_id: str, before_ms: int,
                   reason: str) -> list[str]:
    """Requeue the leased jobs of ``worker_id`` assigned before ``before_ms`` (Redis
    clock); returns the ids returned to pending (or failed: attempts used up)."""
    handed: list[str] = []
    for namespace in known_namespaces(client):
        keys = Keys(namespace)
        ids = client.zrange(keys.leases, 0, -1)
        if not ids:
            continue
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "attempts", "worker_id", "assigned_at")
            rows: list[Any] = pipe.execute()
        functions = QueueFunctions(client, namespace)
        for job_id, (attempt, holder, assigned_at) in zip(ids, rows, strict=True):
            if holder != worker_id or not attempt or not _before(assigned_at, before_ms):
                continue
            if functions.requeue(job_id, attempt, reason) in ("pending", "failed"):
                handed.append(job_id)
    return handed


def cutoff_ms(client: redis.Redis, info: Mapping[str, Any]) -> int:
    """The Redis-clock cutoff for the jobs of a program's dead processes, from its
    supervisord process ``info`` (``getProcessInfo``): the start of its current process
    when one runs, else its last exit. These are epoch seconds: the stamp of
    supervisord's exit line was its local time, hours off when its time zone was not the
    machine's and an hour off across a DST change. Whole seconds, rounded down, so the
    cutoff errs early: a job claimed in the dead process's last moments may be left to
    its lease."""
    start, stop = int(info.get("start") or 0), int(info.get("stop") or 0)
    running = info.get("statename") in ("STARTING", "RUNNING") and start >= stop
    offset_ms = redis_now_ms(client) - int(time.time() * 1000)
    return (start if running else stop) * 1000 + offset_ms


def _before(assigned_at: str | None, before_ms: int) -> bool:
    try:
        return int(assigned_at or "") < before_ms
    except ValueError:
        return False
