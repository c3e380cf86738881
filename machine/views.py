"""What a machine's programs look like: supervisor's state joined with the worker registry.

The health server's ``/ready`` and ``/status`` and the status reports are
built from these views. Worker records are read by key, one per worker of
this machine, so the cost does not grow with the size of the cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from capability_router.registry import worker_key
from capability_router.states import WorkerStatus
from machine.plan import WORKER, MachinePlan
from machine.supervision import RUNNING

#: supervisor states in which the program's process runs.
_ALIVE = frozenset({"STARTING", RUNNING, "STOPPING"})


def process_fields(info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parts of supervisor's process info a report shows (``UNKNOWN`` when missing)."""
    if not info:
        return {"state": "UNKNOWN", "pid": None, "started": None}
    fields = {"state": info["statename"], "pid": info.get("pid") or None,
              "started": info.get("start") or None}
    if info.get("spawnerr"):
        fields["spawn_error"] = info["spawnerr"]
    if info["statename"] in ("EXITED", "FATAL", "BACKOFF"):
        fields["exit_status"] = info.get("exitstatus")
    return fields


def worker_records(client: redis.Redis, plan: MachinePlan) -> dict[str, dict[str, Any]]:
    """Registry records of the plan's workers, JSON fields decoded; absent ones left out."""
    ids = [spec.worker_id for spec in plan.workers if spec.worker_id]
    with client.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hgetall(worker_key(worker_id))
        records = pipe.execute()
    found = {}
    for worker_id, record in zip(ids, records, strict=True):
        if record:
            for name in ("pools", "profile", "jobs"):
                record[name] = json.loads(record.get(name) or "null")
            for name in ("last_seen", "started_at"):
                if record.get(name):
                    record[name] = int(record[name])
            found[worker_id] = record
    return found


def program_views(plan: MachinePlan, infos: Mapping[str, Mapping[str, Any]],
                  client: redis.Redis) -> list[dict[str, Any]]:
    """Every program with its supervisor state; workers also with their registry record.

    A worker counts as ``registered`` only when its record was written by the
    process supervisor runs now (registered at or after that process started):
    a killed worker's record outlives it for a few leases.
    """
    try:
        records, registry_error = worker_records(client, plan), None
    except redis.RedisError as exc:
        records, registry_error = {}, str(exc)
    views = []
    for spec in plan.programs:
        info = infos.get(spec.name)
        view = {**spec.summary(), **process_fields(info)}
        if spec.role == WORKER:
            record = records.get(spec.worker_id or "") or {}
            started_ms = int(info["start"]) * 1000 if info and info.get("start") else None
            # No process (BACKOFF, EXITED, FATAL, STOPPED): a record is a dead process's,
            # whose jobs are on their way back to pending, not this worker's.
            alive = bool(info) and info["statename"] in _ALIVE
            registered = bool(alive and record and started_ms
                              and int(record.get("started_at") or 0) >= started_ms)
            view.update(
                registered=registered, profile=record.get("profile"),
                jobs=(record.get("jobs") or []) if registered else [],
                last_seen=record.get("last_seen"),
                status=record.get("status") if registered else None,
                status_reason=record.get("status_reason") or None if registered else None)
            if registry_error:
                view["registry_error"] = registry_error
        views.append(view)
    return views


def not_ready(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The programs that keep the machine from being ready, each with the reason."""
    waiting = []
    for view in views:
        if view["state"] != RUNNING:
            waiting.append({"name": view["name"], "state": view["state"],
                            "reason": f"{view['role']} is {view['state']}"})
        elif view["role"] == WORKER and view.get("registry_error"):
            # Redis cannot be read: whether the worker registered is unknown, not "not yet".
            waiting.append({"name": view["name"], "state": view["state"],
                            "reason": f"Redis unreachable: {view['registry_error']}"})
        elif view["role"] == WORKER and not view["registered"]:
            waiting.append({"name": view["name"], "state": view["state"],
                            "reason": "worker has not registered in Redis yet"})
        elif view["role"] == WORKER and view.get("status") == WorkerStatus.SERVICE_UNHEALTHY:
            # The worker claims nothing until its service answers again.
            waiting.append({"name": view["name"], "state": view["state"],
                            "status": view["status"],
                            "reason": view.get("status_reason") or "service unhealthy"})
    return waiting
