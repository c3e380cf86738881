"""What one policy's run measured, and its summary figures.

Definitions (README, "Simulator"):

* wait: arrival to the start of the run, model loading included (what the
  user waits); queue wait: arrival to the claim. A job that never started
  within the simulated span counts with its wait up to the span's end.
* warm: every model of the job was in the claiming worker's GPU.
* downloads: models fetched from remote, for jobs and preloads.
* GPU-hours: hours of machines with a GPU from the trace's start until its
  last job is done, machines starting up included; cost: each machine's
  hours times its pool's ``price_per_hour``.
* routing accuracy: share of jobs filed in the pool that, knowing the true
  run time, fits it (the pools that can run the job, the smallest whose
  ``durations_seconds`` holds the true run time, else the nearest range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The ``q`` (0-100) percentile, nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class JobOutcome:
    """One job's times (virtual seconds from midnight) and where it ran."""

    arrival: float
    kind: str
    pool: str = ""
    hindsight_pool: str = ""
    claimed: float | None = None
    started: float | None = None
    completed: float | None = None
    warm: bool = False
    worker: str = ""


@dataclass
class RunRecord:
    """Everything a run measured."""

    policy: str
    jobs: dict[str, JobOutcome] = field(default_factory=dict)
    #: Claim order: job ids as the claim function handed them out.
    claim_order: list[str] = field(default_factory=list)
    downloads: int = 0
    download_gb: float = 0.0
    preloads: int = 0
    machine_hours: float = 0.0
    gpu_hours: float = 0.0
    cost: float = 0.0
    #: Function calls by name (router reads counted as "router_read").
    calls: dict[str, int] = field(default_factory=dict)
    #: Minute samples: (t, {pool: (pending, live machines, busy)}).
    samples: list[tuple[float, dict[str, tuple[int, int, int]]]] = field(default_factory=list)
    #: Profiles registered again after emp_sweep dropped them (no claim for an hour).
    reregistered: int = 0
    wall_seconds: float = 0.0
    end: float = 0.0
    #: Residency changes with their virtual time: (t, worker, model, tier, cause).
    residency_log: list[tuple[float, str, str, str, str]] = field(default_factory=list)

    def waits(self) -> list[float]:
        return [(j.started if j.started is not None else self.end) - j.arrival
                for j in self.jobs.values()]

    def summary(self) -> dict[str, Any]:
        """The figures of the report (module docstring)."""
        jobs = list(self.jobs.values())
        n = len(jobs) or 1
        waits = self.waits()
        queue = [(j.claimed if j.claimed is not None else self.end) - j.arrival for j in jobs]
        started = [j for j in jobs if j.started is not None]
        routed = [j for j in jobs if j.hindsight_pool]
        in_system = max((sum(s[1][p][0] + s[1][p][2] for p in s[1]) for s in self.samples),
                        default=0)
        return {
            "policy": self.policy,
            "jobs": len(jobs),
            "wait_p50_s": round(percentile(waits, 50), 3),
            "wait_p95_s": round(percentile(waits, 95), 3),
            "wait_p99_s": round(percentile(waits, 99), 3),
            "queue_wait_p95_s": round(percentile(queue, 95), 3),
            "under_10s": round(sum(w < 10 for w in waits) / n, 4),
            "warm": round(sum(j.warm for j in started) / (len(started) or 1), 4),
            "downloads": self.downloads,
            "download_gb": round(self.download_gb, 1),
            "preloads": self.preloads,
            "machine_hours": round(self.machine_hours, 1),
            "gpu_hours": round(self.gpu_hours, 1),
            "cost": round(self.cost, 2),
            "completion": round(sum(j.completed is not None for j in jobs) / n, 4),
            "routing_accuracy": (round(sum(j.pool == j.hindsight_pool for j in routed)
                                       / len(routed), 4) if routed else None),
            "peak_jobs_in_system": in_system,
            "function_calls": sum(self.calls.values()),
            "calls": dict(sorted(self.calls.items())),
            "wall_seconds": round(self.wall_seconds, 1),
        }
