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

from capability_router.outages import UNREACHABLE, OutageLog
from capability_router.registry import WorkerRegistry, emit_system_event
from machine.status import (
    MACHINE_EVENT,
    MACHINES_KEY,
    MachineStatus,
    machine_key,
    record_ended,
    redis_now_ms,
)

logger = logging.getLogger(__name__)

#: Reason recorded on requeued jobs.
REASON = "machine gone (stopped reporting)"


def reap_gone_machines(client: redis.Redis, stale_after_seconds: float,
                       retention_seconds: float = 24 * 3600,
                       exclude: str | None = None) -> list[dict[str, Any]]:
    """Reap every machine silent longer than its own limit (the ``stale_seconds`` its
    record declares; ``stale_after_seconds`` for a record that declares none), looking
    only at machines silent longer than ``stale_after_seconds``.

    Each machine is judged by its own limit: judged by the reaper's, a machine
    reporting every 10 s was marked gone by one reporting every 2 s, and its running
    jobs were started again elsewhere. Returns one ``forget_machine`` result per
    machine reaped here (``machine_id``, ``workers``, ``requeued_jobs``). ``exclude``
    is the caller's own id.
    """
    now = redis_now_ms(client)  # the clock the reports are stamped with, not this host's
    silent = client.zrangebyscore(MACHINES_KEY, "-inf", f"({now - int(stale_after_seconds * 1000)}")
    results = []
    for machine_id in silent:
        if machine_id == exclude:
            continue
        declared = _number(client.hget(machine_key(machine_id), "stale_seconds"))
        cutoff = now - int((declared or stale_after_seconds) * 1000)
        if _claim(client, machine_id, cutoff, retention_seconds):
            result = _forget_gone(client, machine_id, REASON)
            logger.warning("machine %s stopped reporting: marked gone, %d jobs requeued",
                           machine_id, len(result["requeued_jobs"]),
                           extra={"event": "machine_gone", "gone_machine_id": machine_id,
                                  "requeued_jobs": result["requeued_jobs"]})
            results.append(result)
    return results


def _number(value: str | bytes | None) -> float | None:
    """A declared positive number of seconds, or None."""
    try:
        number = float(value) if value else 0.0
    except ValueError:
        return None
    return number if number > 0 else None


def _claim(client: redis.Redis, machine_id: str, cutoff: int, retention_seconds: float) -> bool:
    """Mark the machine gone unless it reported meanwhile or another reaper was first."""
    key = machine_key(machine_id)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            score = pipe.zscore(MACHINES_KEY, machine_id)
            if score is None or score >= cutoff:
                return False
            ended_at = redis_now_ms(client)
            pipe.multi()
            record_gone(pipe, machine_id, REASON, ended_at, retention_seconds)
            pipe.execute()
            return True
        except redis.WatchError:
            return False


def record_gone(pipe: redis.client.Pipeline, machine_id: str, reason: str, ended_at: int,
                retention_seconds: float) -> None:
    """Queue, on a MULTI ``pipe``, the record of a machine that ended without handing its
    jobs back: out of the live set, ``gone`` with ``reason``, in the ended index."""
    key = machine_key(machine_id)
    pipe.zrem(MACHINES_KEY, machine_id)
    pipe.hset(key, mapping={"machine_id": machine_id, "status": MachineStatus.GONE,
                            "reason": reason, "ended_at": ended_at})
    pipe.pexpire(key, int(retention_seconds * 1000))
    record_ended(pipe, machine_id, ended_at, retention_seconds)


def end_failed_machine(client: redis.Redis, machine_id: str, reason: str,
                       retention_seconds: float) -> dict[str, Any]:
    """A machine whose programs died under it (supervisord killed): recorded gone and its
    jobs returned to pending at once, as a reaper would, rather than ``offline``, which
    says its workers handed their jobs back themselves (they could not)."""
    with client.pipeline(transaction=True) as pipe:
        record_gone(pipe, machine_id, reason, redis_now_ms(client), retention_seconds)
        pipe.execute()
    return _forget_gone(client, machine_id, reason)


def _forget_gone(client: redis.Redis, machine_id: str, reason: str) -> dict[str, Any]:
    """Return a machine's jobs to pending, drop its workers and announce it gone (a
    ``machine_status`` event naming the requeued jobs); the ``forget_machine`` result."""
    result = WorkerRegistry(client).forget_machine(machine_id, reason=reason)
    emit_system_event(client, MACHINE_EVENT, {
        "machine_id": machine_id, "status": MachineStatus.GONE, "reason": reason,
        "workers": [{"worker_id": w} for w in result["workers"]],
        "requeued_jobs": result["requeued_jobs"]})
    return result


def reap_periodically(client: redis.Redis, stale_after_seconds: float, every_seconds: float,
                      stop: threading.Event, exclude: str | None = None,
                      outage: OutageLog | None = None) -> None:
    """Run the reaper every ``every_seconds`` until ``stop`` is set (a thread's target).

    For processes other than machines, e.g. the API server:
    ``threading.Thread(target=reap_periodically, args=(client, 30, 10, stop), daemon=True)``.
    A Redis outage is said once when it starts and once when it ends (not once a
    period), through ``outage``: the process's own, shared with its other threads, or
    the reaper's.
    """
    outage = outage or OutageLog(
        logger, "machine reaper: Redis unreachable (%s); retrying every period",
        "machine reaper: Redis reachable again")
    while not stop.wait(every_seconds):
        try:
            reap_gone_machines(client, stale_after_seconds, exclude=exclude)
        except UNREACHABLE as exc:
            outage.failed(exc)
            continue
        except redis.RedisError as exc:
            logger.warning("machine reaper: %s; retrying next period", exc)
            continue
        outage.succeeded()
