"""Desired machines per pool: enough to serve the forecast and clear the backlog
within the wait target, never more than the budget allows.

One function, used by ``/api/pools``, the Prometheus gauge that a KEDA
``ScaledObject`` reads, the intelligence service and the simulator's scaler,
so what the simulator proves is what production would ask for. Scaling real
machines is left to Kubernetes or the cloud's own scaler.

The sizing, per pool:

* ``load`` workers are busy on average serving the forecast: arrivals per
  second x mean predicted seconds, divided by the target utilization
  (queues grow without bound as utilization nears 1).
* ``backlog`` workers clear the pending predicted work within the wait
  target, at most one per job of that work (one 10-minute job pending does
  not ask for 60 workers).
* desired machines = ceil((load + backlog) / workers per machine), at
  least one while the pool has unfinished jobs (also jobs submitted without a
  prediction, with routing off), within [min, max]. Scaling down is held
  back: at most ``scale_down_step`` machines fewer than live per decision,
  and none while jobs wait longer than the target with no worker idle (a job
  that waits while workers idle is one they cannot run: it must not hold
  the pool at its peak forever).

New machines take ``startup_seconds`` to take work: callers pass the arrival
rate forecast for when they would arrive (the simulator applies the delay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolDemand:
    """What a pool faces now."""

    #: Predicted seconds of the jobs waiting in the pool.
    pending_seconds: float
    #: Forecast arrivals per second.
    arrival_rate: float
    #: Mean predicted run time of an arriving job, seconds.
    mean_job_seconds: float
    #: Machines live now.
    live_machines: int
    #: Longest current wait in the pool, seconds (0: nothing waits).
    oldest_wait_seconds: float = 0.0
    #: Jobs that ``pending_seconds`` belongs to (None: unknown). One job uses one worker:
    #: the backlog never asks for more workers than this, however long the jobs are.
    backlog_jobs: int | None = None
    #: Workers idle now (their last claim found nothing). A job that waits while workers
    #: idle is one they cannot run: more machines like them would not run it either.
    idle_workers: int = 0


@dataclass(frozen=True)
class ScalingPolicy:
    """A pool's scaling bounds and targets."""

    wait_target_seconds: float = 10.0
    workers_per_machine: int = 1
    min_machines: int = 0
    max_machines: int = 50
    target_utilization: float = 0.8
    #: Seconds a new machine takes to take work (boot, image, preloads).
    startup_seconds: float = 120.0
    #: Most machines released per decision.
    scale_down_step: int = 1


def desired_machines(demand: PoolDemand, policy: ScalingPolicy) -> int:
    """Machines the pool should have; see the module docstring."""
    if policy.workers_per_machine < 1:
        raise ValueError("workers_per_machine must be >= 1")
    if not 0 < policy.target_utilization <= 1:
        raise ValueError("target_utilization must be in (0, 1]")
    wait = max(1.0, policy.wait_target_seconds)
    load = demand.arrival_rate * demand.mean_job_seconds / policy.target_utilization
    backlog = max(0.0, demand.pending_seconds) / wait
    if demand.backlog_jobs is not None:
        backlog = min(backlog, max(0, demand.backlog_jobs))
    workers = load + backlog
    wanted = math.ceil(workers / policy.workers_per_machine - 1e-9)
    if demand.backlog_jobs and wanted < 1:
        wanted = 1  # unfinished jobs of no predicted seconds (routing off) still need one
    if wanted < demand.live_machines:
        if demand.oldest_wait_seconds > policy.wait_target_seconds and not demand.idle_workers:
            wanted = demand.live_machines  # still behind: release nothing
        else:
            wanted = max(wanted, demand.live_machines - max(1, policy.scale_down_step))
    return max(policy.min_machines, min(policy.max_machines, wanted))
