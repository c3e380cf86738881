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


def cutoff_ms(client: redis.Redis, exit_read_at: float) -> int:
    """The Redis-clock cutoff for a dead process's jobs: when the machine read its exit
    line (``Exit.wall``, epoch seconds, with milliseconds), by the offset of the two
    clocks (this host's read after Redis's, so it errs towards an earlier cutoff).

    Not supervisord's stamps: its exit line's is its local time (hours off in another
    time zone, an hour across a DST change), and ``getProcessInfo``'s epoch ``start``
    and ``stop`` are whole seconds, which left a job claimed in the process's last
    second to its lease (a worker killed right after it claimed)."""
    offset_ms = redis_now_ms(client) - int(time.time() * 1000)
    return int(exit_read_at * 1000) + offset_ms


def _before(assigned_at: str | None, before_ms: int) -> bool:
    try:
        return int(assigned_at or "") < before_ms
    except ValueError:
        return False
