"""Mark machines that stopped reporting as gone and return their jobs to pending.

Every live machine runs ``reap_gone_machines`` once per report period, and
any other process may too (the API server, a cron job): the machine whose
record is claimed is decided by an optimistic transaction on its hash, so
when several reapers see the same stale machine exactly one requeues its
jobs, and a machine that reports in the meantime is left alone. Requeues go
through ``WorkerRegistry.forget_machine``, fenced by attempt: a worker of a
machine that was only slow has its later result refused.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from capability_router.registry import WorkerRegistry, emit_system_event
from machine.status import (
    MACHINE_EVENT,
    MACHINES_KEY,
    MachineStatus,
    machine_key,
    now_ms,
    record_ended,
)

logger = logging.getLogger(__name__)

#: Reason recorded on requeued jobs.
REASON = "machine gone (stopped reporting)"


def reap_gone_machines(client: redis.Redis, stale_after_seconds: float,
                       retention_seconds: float = 24 * 3600,
                       exclude: str | None = None) -> list[dict[str, Any]]:
    """Reap every machine whose last report is older than ``stale_after_seconds``.

    Returns one ``forget_machine`` result per machine reaped here (``machine_id``,
    ``workers``, ``requeued_jobs``). ``exclude`` is the caller's own id.
    """
    cutoff = now_ms() - int(stale_after_seconds * 1000)
    stale = client.zrangebyscore(MACHINES_KEY, "-inf", f"({cutoff}")
    results = []
    for machine_id in stale:
        if machine_id != exclude and _claim(client, machine_id, cutoff, retention_seconds):
            result = WorkerRegistry(client).forget_machine(machine_id, reason=REASON)
            emit_system_event(client, MACHINE_EVENT, {
                "machine_id": machine_id, "status": MachineStatus.GONE, "reason": REASON,
                "workers": [{"worker_id": w} for w in result["workers"]],
                "requeued_jobs": result["requeued_jobs"]})
            logger.warning("machine %s stopped reporting: marked gone, %d jobs requeued",
                           machine_id, len(result["requeued_jobs"]),
                           extra={"event": "machine_gone", "gone_machine_id": machine_id,
                                  "requeued_jobs": result["requeued_jobs"]})
            results.append(result)
    return results


def _claim(client: redis.Redis, machine_id: str, cutoff: int, retention_seconds: float) -> bool:
    """Mark the machine gone unless it reported meanwhile or another reaper was first."""
    key = machine_key(machine_id)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            score = pipe.zscore(MACHINES_KEY, machine_id)
            if score is None or score >= cutoff:
                return False
            ended_at = now_ms()
            pipe.multi()
            pipe.zrem(MACHINES_KEY, machine_id)
            pipe.hset(key, mapping={"machine_id": machine_id, "status": MachineStatus.GONE,
                                    "reason": REASON, "ended_at": ended_at})
            pipe.pexpire(key, int(retention_seconds * 1000))
            record_ended(pipe, machine_id, ended_at, retention_seconds)
            pipe.execute()
            return True
        except redis.WatchError:
            return False


def reap_periodically(client: redis.Redis, stale_after_seconds: float, every_seconds: float,
                      stop: threading.Event, exclude: str | None = None) -> None:
    """Run the reaper every ``every_seconds`` until ``stop`` is set (a thread's target).

    For processes other than machines, e.g. the API server:
    ``threading.Thread(target=reap_periodically, args=(client, 30, 10, stop), daemon=True)``.
    """
    while not stop.wait(every_seconds):
        try:
            reap_gone_machines(client, stale_after_seconds, exclude=exclude)
        except redis.RedisError as exc:
            logger.warning("machine reaper: %s; retrying next period", exc)
