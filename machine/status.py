"""Machine status records in Redis, and the ``machine_status`` events.

Keys (outside any pool's hash tag; their own tag ``{machines}`` puts them in one
Redis Cluster slot, as the MULTIs below need):

  emp:{machines}         ZSET   machine id -> ms of its last report (live machines only)
  emp:{machines}:ended   ZSET   machine id -> ms it ended (offline or gone machines): lets
                                the monitor list ended machines without scanning keys.
                                Written in the same MULTI as the status change (here and
                                in ``machine.reaper``), left by a machine that reports
                                again, trimmed of entries older than the retention time
                                whenever it is written; ``ended_machines`` drops entries
                                whose record already expired
  emp:{machines}:machine:<id>  HASH  machine_id, status, hostname, pid, health_url,
                                started_at, last_report, uptime_seconds, gpu_source,
                                gpus (JSON), workers (JSON), services (JSON),
                                log_dropped, [reason, ended_at]; an offline or gone
                                machine's record expires after the retention time
  emp:system:events      STREAM ``machine_status`` events (see ``emit``)

A live machine rewrites its hash and its zset score every report period.
It emits ``machine_status`` when its status or a program's state changes, not
on every periodic report: the system stream feeds webhooks and monitors, and a
report every 10 s from every machine would drown the changes.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

import redis

# Report stamps and the reaper's "now" come from Redis' clock, not each host's: judged by
# local clocks, a machine whose clock ran a minute fast marked every healthy machine gone
# (their running jobs were started again elsewhere), and one whose clock ran slow was
# itself reaped while it reported every 10 s.
from capability_router.functions import redis_now_ms
from capability_router.keys import PREFIX
from capability_router.registry import emit_system_event

MACHINES_KEY = f"{PREFIX}:{{machines}}"
ENDED_MACHINES_KEY = f"{PREFIX}:{{machines}}:ended"
MACHINE_EVENT = "machine_status"


class MachineStatus(StrEnum):
    """States of a machine record."""

    ONLINE = "online"
    #: Stopped cleanly: its workers returned their jobs themselves.
    OFFLINE = "offline"
    #: Stopped reporting; the reaper returned its jobs to pending.
    GONE = "gone"


def machine_key(machine_id: str) -> str:
    return f"{PREFIX}:{{machines}}:machine:{machine_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


def _fields(report: dict[str, Any]) -> dict[str, str | int | float]:
    """Hash fields: lists and dicts as JSON, None as ''."""
    fields: dict[str, str | int | float] = {}
    for key, value in report.items():
        if isinstance(value, (list, dict)):
            fields[key] = json.dumps(value)
        elif value is None:
            fields[key] = ""
        elif isinstance(value, bool):
            fields[key] = int(value)
        else:
            fields[key] = value
    return fields


def event_data(report: dict[str, Any]) -> dict[str, Any]:
    """What a ``machine_status`` event carries: id, status, GPUs, workers' states."""
    data = {key: report.get(key) for key in ("machine_id", "status", "hostname", "health_url",
                                             "gpus", "reason")}
    data["workers"] = [{key: worker.get(key) for key in ("worker_id", "name", "state", "gpu")}
                       for worker in report.get("workers", [])]
    data["services"] = [{key: service.get(key) for key in ("name", "state", "port")}
                        for service in report.get("services", [])]
    return {k: v for k, v in data.items() if v is not None}


def record_ended(pipe: redis.client.Pipeline, machine_id: str, ended_at: int,
                 retention_seconds: float) -> None:
    """Queue, on a MULTI ``pipe``, the ended-index entry of a machine that just ended.

    Entries older than the retention are trimmed here, on write, because
    their records have expired by then and nothing else would remove them.
    """
    pipe.zadd(ENDED_MACHINES_KEY, {machine_id: ended_at})
    pipe.zremrangebyscore(ENDED_MACHINES_KEY, "-inf",
                          f"({ended_at - int(retention_seconds * 1000)}")


def publish(client: redis.Redis, report: dict[str, Any], emit: bool) -> None:
    """Write a live machine's report (hash + zset score); ``emit`` adds an event."""
    machine_id = report["machine_id"]
    stamp = int(report.get("last_report") or redis_now_ms(client))
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(machine_key(machine_id))
        pipe.hset(machine_key(machine_id), mapping=_fields({**report, "last_report": stamp}))
        pipe.zadd(MACHINES_KEY, {machine_id: stamp})
        pipe.zrem(ENDED_MACHINES_KEY, machine_id)  # it reports again: no longer ended
        pipe.execute()
    if emit:
        emit_system_event(client, MACHINE_EVENT, event_data(report), stamp)


def publish_offline(client: redis.Redis, report: dict[str, Any], retention_seconds: float) -> None:
    """A machine stopping cleanly: record it offline, out of the live set, with an expiry."""
    machine_id = report["machine_id"]
    ended_at = redis_now_ms(client)
    report = {**report, "status": MachineStatus.OFFLINE, "ended_at": ended_at}
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(machine_key(machine_id))
        pipe.hset(machine_key(machine_id), mapping=_fields(report))
        pipe.pexpire(machine_key(machine_id), int(retention_seconds * 1000))
        pipe.zrem(MACHINES_KEY, machine_id)
        record_ended(pipe, machine_id, ended_at, retention_seconds)
        pipe.execute()
    emit_system_event(client, MACHINE_EVENT, event_data(report), ended_at)


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    """A machine hash with its JSON and integer fields decoded."""
    record: dict[str, Any] = dict(raw)
    for key in ("gpus", "workers", "services"):
        if record.get(key):
            record[key] = json.loads(record[key])
    for key in ("pid", "started_at", "last_report", "ended_at", "log_dropped"):
        if record.get(key):
            record[key] = int(float(record[key]))
    return record


def read_machine(client: redis.Redis, machine_id: str) -> dict[str, Any] | None:
    """A machine's record with its JSON fields decoded; None when there is none."""
    raw = client.hgetall(machine_key(machine_id))
    return _decode(raw) if raw else None


def read_machines(client: redis.Redis, machine_ids: list[str]) -> list[dict[str, Any] | None]:
    """Records of many machines in one round trip (None where there is none), in order."""
    if not machine_ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for machine_id in machine_ids:
            pipe.hgetall(machine_key(machine_id))
        raws = pipe.execute()
    return [_decode(raw) if raw else None for raw in raws]


def machines(client: redis.Redis) -> list[dict[str, Any]]:
    """Records of the machines in the live set (oldest report first)."""
    ids = client.zrange(MACHINES_KEY, 0, -1)
    return [record for record in read_machines(client, ids) if record]


def ended_machines(client: redis.Redis) -> list[dict[str, Any]]:
    """Records of machines that stopped (offline) or were reaped (gone), newest end first.

    Read from the ended index, so listing them never scans keys. Entries whose
    record expired (past the retention) are removed from the index here; a
    record that is online again (it reported between the two reads) is skipped.
    """
    ids = client.zrevrange(ENDED_MACHINES_KEY, 0, -1)
    found, expired = [], []
    for machine_id, record in zip(ids, read_machines(client, ids), strict=True):
        if record is None:
            expired.append(machine_id)
        elif record.get("status") in (MachineStatus.OFFLINE, MachineStatus.GONE):
            found.append(record)
    if expired:
        client.zrem(ENDED_MACHINES_KEY, *expired)
    return found
