"""Which workers and machines are alive: heartbeats kept in Redis.

Workers write a small record on start and at every lease renewal; a record
that stops being refreshed expires. The API, the monitor and the webhook
service read it, and ``forget_machine`` returns a machine's jobs to pending.
Presence is not job state, so plain commands with expiries do here; the
requeue itself goes through the function library.

Keys (outside any pool's hash tag, like ``emp:namespaces``):

  emp:workers              ZSET   worker id -> ms of its last heartbeat
  emp:worker:<id>          HASH   worker_id, machine_id, hostname, pools,
                                  profile (JSON), jobs (JSON), status (idle,
                                  busy, service_unhealthy), status_reason,
                                  started_at, last_seen, lease_ms (the worker's
                                  lease: it heartbeats every third of it; absent
                                  in records of older workers); expires after
                                  ``ttl_ms``
  emp:system:events        STREAM worker_status events (online, offline,
                                  service_unhealthy, service_healthy), their
                                  ``timestamp`` on Redis' clock
  P.."workers" (per pool)  ZSET   worker id -> ms its heartbeat expires, in each
                                  pool it serves: the router counts a pool's
                                  live workers with one ZCOUNT

A worker that leaves, or whose record expired (found by ``workers``), also
loses its model residency in every pool (``capability_router.residency``).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import redis

from capability_router.functions import QueueFunctions, redis_now_ms
from capability_router.keys import PREFIX, Keys, known_namespaces
from capability_router.residency import clear_worker
from capability_router.states import WorkerStatus

WORKERS_KEY = f"{PREFIX}:workers"
SYSTEM_EVENTS_KEY = f"{PREFIX}:system:events"
SYSTEM_EVENTS_MAXLEN = 10_000


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def emit_system_event(client: redis.Redis, event: str, data: dict[str, Any],
                      now_ms: int | None = None) -> str:
    """Append a worker or machine event to the system stream; returns its id.

    Its ``timestamp`` is Redis' clock (``now_ms``, read by the caller with
    ``redis_now_ms``; read here when not given: one TIME call, these events being
    rare: a worker's start, stop and health changes, a machine's status changes),
    as heartbeats, job events and machine reports are: a host whose clock ran
    3 min off stamped its events 3 min off everything else.
    """
    data = {**data, "timestamp": redis_now_ms(client) if now_ms is None else int(now_ms)}
    return client.xadd(SYSTEM_EVENTS_KEY, {"event": event, "data": json.dumps(data)},
                       maxlen=SYSTEM_EVENTS_MAXLEN, approximate=True)


class WorkerRegistry:
    """Heartbeats of live workers and the queries built on them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def heartbeat(
        self, profile: dict[str, Any], pools: list[str], jobs: list[str], ttl_ms: int,
        first: bool = False, unhealthy: str | None = None, lease_ms: int | None = None,
    ) -> None:
        """Record that the worker is alive, holding ``jobs``; ``first`` announces it.

        ``unhealthy`` is why the worker's service cannot take jobs (its claim
        gate is closed): the status is then ``service_unhealthy`` with that reason.
        ``lease_ms``, the worker's lease, is kept so the monitor judges its silence by
        its own heartbeat cadence, not the monitor's ``EMP_LEASE_SECONDS``.
        """
        worker_id = profile["worker_id"]
        # Redis' clock, as the queue's functions and every reader of these scores use: a
        # host whose clock ran 3 min ahead pruned every other worker from the pool's live
        # set, and one running behind looked dead from its first heartbeat.
        now = redis_now_ms(self.client)
        status = (WorkerStatus.SERVICE_UNHEALTHY if unhealthy is not None
                  else WorkerStatus.BUSY if jobs else WorkerStatus.IDLE)
        fields = {
            "worker_id": worker_id, "machine_id": profile.get("machine_id") or "",
            "hostname": socket.gethostname(), "pools": json.dumps(sorted(pools)),
            "profile": json.dumps(profile), "jobs": json.dumps(jobs),
            "status": str(status), "status_reason": unhealthy or "", "last_seen": now,
        }
        if first:
            fields["started_at"] = now
        if lease_ms is not None:
            fields["lease_ms"] = int(lease_ms)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(worker_key(worker_id), mapping=fields)
            pipe.pexpire(worker_key(worker_id), ttl_ms)
            pipe.zadd(WORKERS_KEY, {worker_id: now})
            for pool in pools:
                pipe.zadd(Keys(pool).workers, {worker_id: now + ttl_ms})
                pipe.zremrangebyscore(Keys(pool).workers, "-inf", now - ttl_ms)
            pipe.execute()
        if first:
            emit_system_event(self.client, "worker_status", {
                "worker_id": worker_id, "machine_id": fields["machine_id"],
                "status": "online", "services": profile.get("services", []),
            }, now)

    def service_changed(self, worker_id: str, machine_id: str, unhealthy: str | None) -> None:
        """Announce that a worker's service stopped (``unhealthy``: why) or resumed taking jobs."""
        emit_system_event(self.client, "worker_status", {
            "worker_id": worker_id, "machine_id": machine_id,
            "status": "service_unhealthy" if unhealthy is not None else "service_healthy",
            "reason": unhealthy or "",
        })

    def leave(self, worker_id: str, machine_id: str = "") -> None:
        """A worker stopping cleanly (or forgotten): drop its record and model residency."""
        pools = json.loads(self.client.hget(worker_key(worker_id), "pools") or "[]")
        with self.client.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.zrem(Keys(pool).workers, worker_id)
            pipe.delete(worker_key(worker_id))
            pipe.zrem(WORKERS_KEY, worker_id)
            pipe.execute()
        clear_worker(self.client, worker_id, known_namespaces(self.client))
        # The event's time is read by emit_system_event (a TIME of its own: a cluster
        # pipeline refuses TIME; a worker leaves once).
        emit_system_event(self.client, "worker_status", {
            "worker_id": worker_id, "machine_id": machine_id, "status": "offline",
        })

    def workers(self) -> list[dict[str, Any]]:
        """Live workers' records; ids whose record expired are pruned."""
        ids = self.client.zrange(WORKERS_KEY, 0, -1)
        if not ids:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(worker_key(worker_id))
            records = pipe.execute()
        live, gone = [], []
        for worker_id, record in zip(ids, records, strict=True):
            if not record:
                gone.append(worker_id)
                continue
            for name in ("pools", "profile", "jobs"):
                record[name] = json.loads(record.get(name) or "null")
            for name in ("last_seen", "started_at", "lease_ms"):
                if record.get(name):
                    record[name] = int(record[name])
            live.append(record)
        if gone:
            self.client.zrem(WORKERS_KEY, *gone)
            namespaces = known_namespaces(self.client)
            for worker_id in gone:  # dead without leaving: its models are warm nowhere
                clear_worker(self.client, worker_id, namespaces)
        return live

    def machines(self) -> dict[str, list[dict[str, Any]]]:
        """Live workers grouped by machine id ('' for workers that name none)."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in self.workers():
            grouped.setdefault(record.get("machine_id") or "", []).append(record)
        return grouped

    def forget_machine(self, machine_id: str, reason: str = "machine removed") -> dict[str, Any]:
        """Drop a machine's workers and return every job they hold to pending.

        A job counts as the machine's when its record names the machine or a
        worker of it. Requeues are fenced by attempt, so a worker of the
        machine that is in fact still running has its later result refused.
        """
        workers = {w["worker_id"] for w in self.machines().get(machine_id, [])}
        requeued: list[str] = []
        for namespace in known_namespaces(self.client):
            keys = Keys(namespace)
            functions = QueueFunctions(self.client, namespace)
            ids = self.client.zrange(keys.leases, 0, -1)
            if not ids:
                continue
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(keys.job(job_id), "attempts", "worker_id", "machine_id")
                rows = pipe.execute()
            for job_id, (attempt, worker_id, job_machine) in zip(ids, rows, strict=True):
                if job_machine == machine_id or worker_id in workers:
                    if functions.requeue(job_id, attempt or "", reason) in ("pending", "failed"):
                        requeued.append(job_id)
        for worker_id in workers:
            self.leave(worker_id, machine_id)
        return {"machine_id": machine_id, "workers": sorted(workers), "requeued_jobs": requeued}
