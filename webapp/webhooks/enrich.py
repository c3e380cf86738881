"""Job fields added to each job event, so filters and payloads have them.

A stream event carries only what changed (``job_assigned`` has the worker,
``job_started`` the machine). The service keeps, per job, the job record's
fixed fields (job type, priority, customer, workflow) and the worker and
machine last seen in the job's events, read in stream order; a job first
met mid-life is read from its record. A machine missing from the events
is looked up in the worker registry. Fields an event carries itself win,
except the job's identity (``IDENTITY``: what filters and customer scoping
read), which only ``job_submitted`` sets: a progress event carries whatever
details its task reported, and a task's ``customer_id`` must not route the
event to another customer's hook. ``job_id`` is the id the job's customer
knows it by (``webapp.job_ids``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import redis

from capability_router.keys import Keys
from capability_router.registry import worker_key
from webapp import job_ids
from webapp.webhooks.events import Event

#: Record fields read for a job first met mid-life.
RECORD_FIELDS = ("service_required", "priority", "customer_id", "workflow_id", "worker_id",
                 "machine_id")
#: Events that happen before (or without) a worker: no worker or machine added.
UNASSIGNED_EVENTS = frozenset({"job_submitted", "workflow_submitted", "job_resubmitted"})
#: The job's own fields: from its record or its ``job_submitted``, never from other events.
IDENTITY = frozenset({"job_type", "priority", "customer_id", "workflow_id", "pool"})
#: Fields every job event's data has (None when unknown).
JOB_FIELDS = ("job_id", "job_type", "priority", "customer_id", "workflow_id", "worker_id",
              "machine_id", "pool")


def _number(value: Any) -> int | float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


@dataclass
class _Job:
    job_type: str | None = None
    priority: int | float | None = None
    customer_id: str | None = None
    workflow_id: str | None = None
    worker_id: str | None = None
    machine_id: str | None = None


class Enricher:
    """Per-job field cache of one consumer (not shared between threads).

    :param client: Redis client (``decode_responses=True``).
    :param size: jobs and workers remembered (least recently used dropped).
    """

    def __init__(self, client: redis.Redis, size: int = 20_000) -> None:
        self.client = client
        self.size = size
        self._jobs: OrderedDict[tuple[str, str], _Job] = OrderedDict()
        self._machines: OrderedDict[str, str] = OrderedDict()

    def _remember(self, cache: OrderedDict, key: Any, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.size:
            cache.popitem(last=False)

    def prefetch(self, events: list[Event]) -> None:
        """Read, in one round trip, the records of jobs not yet known."""
        wanted = []
        for event in events:
            key = (event.namespace, event.job_id)
            if event.namespace is None or not event.job_id or key in self._jobs:
                continue
            if event.name == "job_submitted":
                self._remember(self._jobs, key, _Job())
                continue
            if key not in wanted:
                wanted.append(key)
        if not wanted:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for namespace, job_id in wanted:
                pipe.hmget(Keys(namespace).job(job_id), *RECORD_FIELDS)
            rows = pipe.execute()
        for key, row in zip(wanted, rows, strict=True):
            job_type, priority, customer, workflow, worker, machine = row
            self._remember(self._jobs, key, _Job(
                job_type or None, _number(priority), customer or None, workflow or None,
                worker or None, machine or None))

    def _machine_of(self, worker_id: str | None) -> str | None:
        if not worker_id:
            return None
        if worker_id not in self._machines:
            self._remember(self._machines, worker_id,
                           self.client.hget(worker_key(worker_id), "machine_id") or "")
        return self._machines[worker_id] or None

    def enrich(self, event: Event) -> dict[str, Any]:
        """The event's data with the job's fields added (system events unchanged).

        Call in stream order: each event also updates what later ones get.
        """
        data = event.data
        if event.namespace is None or not event.job_id:
            return dict(data)
        key = (event.namespace, event.job_id)
        if key not in self._jobs:
            self.prefetch([event])
        job = self._jobs[key]
        self._jobs.move_to_end(key)
        if event.name == "job_submitted":  # a job filed (again, under a reused id): all anew
            job = _Job(data.get("job_type") or None, _number(data.get("priority")),
                       data.get("customer_id") or None, data.get("workflow_id") or None)
            self._remember(self._jobs, key, job)
        worker = data.get("worker_id")
        if worker and worker != job.worker_id:
            job.worker_id, job.machine_id = worker, None
        if data.get("machine_id"):
            job.machine_id = data["machine_id"]
        out: dict[str, Any] = {
            "job_id": event.job_id, "job_type": job.job_type, "priority": job.priority,
            "customer_id": job.customer_id, "workflow_id": job.workflow_id,
            "worker_id": None, "machine_id": None, "pool": event.namespace,
        }
        if event.name not in UNASSIGNED_EVENTS:
            out["worker_id"] = job.worker_id
            out["machine_id"] = job.machine_id or self._machine_of(job.worker_id)
        submitted = event.name == "job_submitted"
        for name, value in data.items():
            if name in IDENTITY and not submitted:
                continue
            if name not in out or (value is not None and value != ""):
                out[name] = value
        # The id the job's customer knows it by (its chosen id, if stored scoped).
        out["job_id"] = job_ids.shown(event.job_id, out.get("customer_id"))
        return out
