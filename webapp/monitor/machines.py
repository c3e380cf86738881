"""The monitor's Machines view: every machine an operator should see, with its workers.

Three sources are joined, each read in a constant number of round trips
(no key scans): the live machine records (``machine.status.machines``), the
ended ones (``machine.status.ended_machines``: stopped cleanly or reaped) and
the worker registry. Workers the registry knows under a machine id with no
machine record (a bare ``emp worker``, with or without ``MACHINE_ID``) still
show, under that id or under the pseudo machine ``""`` ("(no machine)"), so
no live worker is invisible. A worker a machine reports but the registry does
not know shows as not registered: supervisor may run it while it cannot reach
Redis, which is exactly what an operator must see.

Forgetting a machine is ``capability_router.registry.WorkerRegistry.forget_machine``.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from capability_router.registry import WorkerRegistry
from machine.settings import MachineSettings
from machine.status import MachineStatus, ended_machines, machines, redis_now_ms
from machine.supervision import RUNNING
from webapp.monitor.liveness import silent

#: Display name of the pseudo machine of workers that name no machine.
NO_MACHINE = "(no machine)"

#: What the Machines page shows of a machine and of each of its workers (``page_view``).
PAGE_MACHINE_FIELDS = ("machine_id", "name", "status", "ended", "has_record", "hostname",
                       "gpu_source", "gpus", "gpu_count", "healthy", "health_reason", "stale",
                       "ended_at", "reason", "last_report", "uptime_seconds")
PAGE_WORKER_FIELDS = ("worker_id", "name", "status", "program_state", "gpu", "jobs",
                      "last_seen")

#: Profile keys summarised on their own; any other key is a custom capability.
_PROFILE_KEYS = frozenset({"worker_id", "machine_id", "services", "hardware", "models",
                           "customer_access", "workflow_id"})


def default_stale_seconds() -> float:
    """The reaper's stale time (``EMP_MACHINE_STALE_SECONDS``, default 3 report periods = 30 s).

    Read the way machines read it, so "stale" here means "about to be reaped".
    """
    return float(MachineSettings.from_env(machine_id="monitor").stale_seconds or 0)


def _age_seconds(stamp_ms: int | None, now: int) -> float | None:
    return None if not stamp_ms else round(max(0, now - stamp_ms) / 1000, 1)


def capabilities(profile: dict[str, Any] | None) -> dict[str, Any]:
    """The capability profile as a monitor shows it: what jobs this worker can take."""
    profile = profile or {}
    hardware = profile.get("hardware") or {}
    access = profile.get("customer_access") or {}
    return {
        "services": profile.get("services") or [],
        "gpu_memory_gb": hardware.get("gpu_memory_gb"),
        "gpu_model": hardware.get("gpu_model"),
        "ram_gb": hardware.get("ram_gb"),
        "cpu_cores": hardware.get("cpu_cores"),
        "models": profile.get("models") or {},
        "customer_isolation": access.get("isolation") or "none",
        "allowed_customers": access.get("allowed_customers") or [],
        "denied_customers": access.get("denied_customers") or [],
        "workflow_id": profile.get("workflow_id"),
        "custom": {k: v for k, v in profile.items() if k not in _PROFILE_KEYS},
    }


def _worker_view(program: dict[str, Any] | None, record: dict[str, Any] | None,
                 now: int) -> dict[str, Any]:
    """One worker: the machine's program entry (if any) joined with its registry record.

    A registry record written before the program's current process started
    belongs to a dead predecessor (records outlive a killed worker for a few
    leases), so it does not count as registered, as in the health server. A record
    whose heartbeat is a lease old (``liveness.silent``) is a worker killed or hung:
    ``silent``, not the idle or busy its record last said.
    """
    program = program or {}
    started = program.get("started")
    if record and started and int(record.get("started_at") or 0) < int(started) * 1000:
        record = None
    jobs = list((record or {}).get("jobs") or [])
    status = "not_registered" if record is None else ("busy" if jobs else "idle")
    if record is not None and record.get("status") == "service_unhealthy":
        status = "service_unhealthy"  # claims nothing until its service answers
    if record is not None and silent(record, now):
        status = "silent"
    profile = (record or {}).get("profile")
    return {
        "worker_id": program.get("worker_id") or (record or {}).get("worker_id"),
        "name": program.get("name"),
        "gpu": program.get("gpu"),
        "managed": bool(program),
        "program_state": program.get("state"),
        "pid": program.get("pid"),
        "spawn_error": program.get("spawn_error"),
        "registered": record is not None,
        "status": status,
        "status_reason": (record or {}).get("status_reason") or None,
        "jobs": jobs,
        "hostname": (record or {}).get("hostname"),
        "pools": (record or {}).get("pools") or [],
        "last_seen": (record or {}).get("last_seen"),
        "last_seen_age_seconds": _age_seconds((record or {}).get("last_seen"), now),
        "started_at": (record or {}).get("started_at"),
        "capabilities": capabilities(profile),
        "profile": profile,
    }


def _workers(reported: list[dict[str, Any]], records: list[dict[str, Any]],
             now: int) -> list[dict[str, Any]]:
    """The machine's reported programs in its order, then registry-only workers by id."""
    by_id = {r["worker_id"]: r for r in records}
    views = [_worker_view(p, by_id.pop(p.get("worker_id") or "", None), now) for p in reported]
    views.extend(_worker_view(None, by_id[w], now) for w in sorted(by_id))
    return views


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _health(machine: dict[str, Any]) -> tuple[bool, str]:
    """(healthy, short reason) an operator reads first."""
    if machine["ended"]:
        return False, machine["status"] + (f": {machine['reason']}" if machine["reason"] else "")
    if machine["stale"]:
        what = "report" if machine["has_record"] else "heartbeat"
        return False, f"no {what} for {machine['last_report_age_seconds']:.0f}s"
    silent_ones = "; ".join(
        f"{w['name'] or w['worker_id']}: no heartbeat for {w['last_seen_age_seconds']:.0f}s"
        for w in machine["workers"] if w["status"] == "silent")
    if not machine["has_record"]:
        if silent_ones:
            return False, silent_ones
        return True, f"{_plural(len(machine['workers']), 'worker')} heartbeating, no machine report"
    states = [(w["name"], w["program_state"]) for w in machine["workers"] if w["managed"]]
    states += [(s.get("name"), s.get("state")) for s in machine["services"]]
    for name, state in states:
        if state != RUNNING:
            return False, f"{name} is {state}"
    for worker in machine["workers"]:
        if not worker["registered"]:
            return False, f"{worker['name'] or worker['worker_id']} is not registered"
        if worker["status"] == "service_unhealthy":
            return False, f"{worker['name'] or worker['worker_id']}: {worker['status_reason']}"
    if silent_ones:
        return False, silent_ones
    count = len(states)  # "all 1 program" is not English
    programs = f"all {count} programs" if count > 1 else _plural(count, "program")
    return True, f"{programs} running and registered"


def _machine_view(machine_id: str, record: dict[str, Any] | None,
                  workers: list[dict[str, Any]], now: int, stale_ms: int) -> dict[str, Any]:
    record = record or {}
    status = record.get("status") or MachineStatus.ONLINE
    ended = status in (MachineStatus.OFFLINE, MachineStatus.GONE)
    last_report = record.get("last_report")
    if not record:  # workers only: their newest heartbeat is the last sign of life
        last_report = max((w.get("last_seen") or 0 for w in workers), default=0) or None
    gpus = record.get("gpus") or []
    view: dict[str, Any] = {
        "machine_id": machine_id,
        "name": machine_id or NO_MACHINE,
        "status": str(status),
        "ended": ended,
        "has_record": bool(record),
        "hostname": record.get("hostname") or next(
            (w["hostname"] for w in workers if w.get("hostname")), None),
        "health_url": record.get("health_url") or None,
        "pid": record.get("pid"),
        "started_at": record.get("started_at"),
        "last_report": last_report,
        "last_report_age_seconds": _age_seconds(last_report, now),
        "uptime_seconds": None if ended or not record.get("uptime_seconds")
        else float(record["uptime_seconds"]),
        "ended_at": record.get("ended_at"),
        "reason": record.get("reason") or None,
        # Workers only: stale once each is silent (its newest heartbeat one of its own
        # leases old: it beats every third of one), well before their records expire.
        "stale": not ended and bool(last_report) and (
            now - int(last_report) > stale_ms if record
            else all(silent(w, now) for w in workers)),
        "gpu_source": record.get("gpu_source") or None,
        "gpus": gpus,
        "gpu_count": len(gpus),
        "services": record.get("services") or [],
        "log_dropped": record.get("log_dropped"),
        "workers": _workers(record.get("workers") or [], workers, now),
    }
    counts = {"total": 0, "busy": 0, "idle": 0, "not_registered": 0}
    for worker in view["workers"]:
        counts["total"] += 1
        counts[worker["status"]] = counts.get(worker["status"], 0) + 1  # + service_unhealthy
    view["worker_counts"] = counts
    view["healthy"], view["health_reason"] = _health(view)
    return view


def machines_view(client: redis.Redis,
                  stale_after_seconds: float | None = None) -> list[dict[str, Any]]:
    """Every machine an operator should see: live (by id, "(no machine)" last), then ended
    (newest end first), each with its workers joined from the registry.

    ``stale_after_seconds`` defaults to the reaper's stale time, so a live
    machine marked ``stale`` is one the reaper is about to mark gone.
    """
    stale_ms = int((default_stale_seconds() if stale_after_seconds is None
                    else stale_after_seconds) * 1000)
    live = {record["machine_id"]: record for record in machines(client)}
    ended = [record for record in ended_machines(client) if record["machine_id"] not in live]
    grouped = WorkerRegistry(client).machines()
    now = redis_now_ms(client)  # the clock reports are stamped with
    ended_ids = {record["machine_id"] for record in ended}
    live_ids = sorted(set(live) | (set(grouped) - ended_ids), key=lambda m: (m == "", m))
    views = [_machine_view(m, live.get(m), grouped.get(m, []), now, stale_ms) for m in live_ids]
    ended.sort(key=lambda record: record.get("ended_at") or 0, reverse=True)
    views.extend(_machine_view(record["machine_id"], record,
                               grouped.get(record["machine_id"], []), now, stale_ms)
                 for record in ended)
    return views


def page_view(views: list[dict[str, Any]]) -> dict[str, Any]:
    """What the Machines page reads at every refresh: the fields it shows, each distinct
    capability profile once (``profiles``; a worker's ``capabilities`` is its index there),
    and none of the full view's ages, which change with the clock alone.

    300 machines of 8 workers were 2.2 MB a refresh, every 5 s: the raw profile beside
    its summary, one copy per worker of the same few profiles, fields the page does not
    show. Without ages an unchanged fleet reads the same bytes, so the same ETag (304).
    """
    profiles: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    machines_out = []
    for machine in views:
        out = {name: machine.get(name) for name in PAGE_MACHINE_FIELDS}
        workers = []
        for worker in machine["workers"]:
            row = {name: worker.get(name) for name in PAGE_WORKER_FIELDS}
            key = json.dumps(worker["capabilities"], sort_keys=True, default=str)
            if key not in index:
                index[key] = len(profiles)
                profiles.append(worker["capabilities"])
            row["capabilities"] = index[key]
            workers.append(row)
        out["workers"] = workers
        machines_out.append(out)
    return {"machines": machines_out, "profiles": profiles}
