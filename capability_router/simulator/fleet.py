"""How many machines of each hardware type run, and what they cost.

The uniform fleet follows the scenario's machines per hour. It is split
between the hardware types (one per pool of the pools file) in proportion to
the work each pool would get knowing true run times (at least ``MIN_SHARE``
and one machine each): the operator's provisioning. ``uniform`` puts every machine in one
namespace; ``pools`` and ``pools+warm`` put each type in its pool, so the
three have the same machines, hours and cost. ``pools+warm+predictive``
takes each pool's count from the elastic scaler instead, their sum never
above the uniform fleet's size at that time (the same machine budget, moved
between pools; scaled down in proportion when over), and its new machines
take ``STARTUP_SECONDS`` to start (they cost from the request).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capability_router.pools import PoolsFile
from capability_router.simulator.machines import Hardware
from capability_router.simulator.policies import Policy
from capability_router.simulator.trace import Scenario, TraceJob

if TYPE_CHECKING:
    from capability_router.simulator.metrics import RunRecord

#: Smallest share of the fleet a pool gets in the fixed split.
MIN_SHARE = 0.05
#: Seconds an elastic machine takes from request to its first claim.
STARTUP_SECONDS = 120.0


@dataclass
class Machine:
    """One machine: its hardware type, namespace and life times (virtual seconds)."""

    id: str
    hardware: str
    pool: str
    requested_at: float
    ready_at: float
    stopped_at: float | None = None
    leaving: bool = False


def split(total: int, shares: dict[str, float]) -> dict[str, int]:
    """``total`` machines over the types by ``shares`` (largest remainder, 1 each at least)."""
    names = list(shares)
    if total <= 0:
        return {n: 0 for n in names}
    counts = {n: 1 for n in names}
    rest = max(0, total - len(names))
    weight = sum(shares.values()) or 1.0
    exact = {n: rest * shares[n] / weight for n in names}
    for n in names:
        counts[n] += int(exact[n])
    left = rest - sum(int(v) for v in exact.values())
    for n in sorted(names, key=lambda n: (-(exact[n] - int(exact[n])), n))[:left]:
        counts[n] += 1
    return counts


def within_budget(wanted: dict[str, int], budget: int) -> dict[str, int]:
    """``wanted`` machines per type, scaled down in proportion when they exceed ``budget``
    (at least one each)."""
    total = sum(wanted.values())
    if total <= budget:
        return dict(wanted)
    return split(budget, {name: float(n) for name, n in wanted.items()})


class Fleet:
    """The machines of one run."""

    def __init__(self, scenario: Scenario, pools_file: PoolsFile, hardware: dict[str, Hardware],
                 policy: Policy, hindsight: Callable[[TraceJob], str]) -> None:
        self.scenario = scenario
        self.pools_file = pools_file
        self.hardware = hardware
        self.policy = policy
        work = {name: 0.0 for name in pools_file.pools}
        for job in scenario.jobs:
            pool = hindsight(job)
            if pool:
                work[pool] += job.run_seconds
        total = sum(work.values()) or 1.0
        #: Work shares, each at least MIN_SHARE: a pool also spends time loading models.
        self.shares = {name: max(MIN_SHARE, w / total) for name, w in work.items()}
        work = self.shares
        self.machines: dict[str, Machine] = {}
        self.counter = 0
        #: The uniform fleet's size now: the elastic policy's machine budget.
        self.budget = 0
        #: The most machines the fixed split ever gives each type (the elastic cap).
        self.peak = {name: 0 for name in work}
        for hour in range(24):
            for name, n in split(scenario.fleet_by_hour[hour], work).items():
                self.peak[name] = max(self.peak[name], n)

    def namespace(self, hardware: str) -> str:
        return hardware if self.policy.pools else "default"

    def targets(self, t: float, predictor: Any = None) -> dict[str, int]:
        """Machines wanted per hardware type at ``t``."""
        budget = self.budget = self.scenario.machines_at(t)
        if self.policy.elastic and predictor is not None:
            return within_budget(predictor.desired(t, self.live_counts()), budget)
        return split(budget, self.shares)

    def live_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.shares}
        for machine in self.machines.values():
            if machine.stopped_at is None and not machine.leaving:
                counts[machine.hardware] += 1
        return counts

    def resize(self, hardware: str, count: int, t: float, stop_order: list[str]) -> list[Machine]:
        """Request or release machines of ``hardware``; returns those changed."""
        running = [m for m in self.machines.values()
                   if m.hardware == hardware and m.stopped_at is None]
        current = [m for m in running if not m.leaving]
        changed: list[Machine] = []
        if count > len(running):  # a machine finishing its last job still counts
            delay = STARTUP_SECONDS if self.policy.elastic and t > self.scenario.start else 0.0
            starts = count - len(running)
            if self.policy.elastic:  # draining machines of other types hold budget too
                alive = sum(1 for m in self.machines.values() if m.stopped_at is None)
                starts = min(starts, max(0, self.budget - alive))
            for _ in range(starts):
                self.counter += 1
                machine = Machine(f"{hardware}-{self.counter}", hardware,
                                  self.namespace(hardware), t, t + delay)
                self.machines[machine.id] = machine
                changed.append(machine)
        elif count < len(current):
            excess = len(current) - count
            starting = [m for m in reversed(current) if m.ready_at > t]
            order = starting + [self.machines[i] for i in stop_order
                                if self.machines[i].hardware == hardware
                                and not self.machines[i].leaving]
            for machine in order[:excess]:
                machine.leaving = True
                if machine.ready_at > t:
                    machine.stopped_at = t
                changed.append(machine)
        return changed

    def stopped(self, machine_id: str, t: float) -> None:
        self.machines[machine_id].stopped_at = t

    def close(self, end: float, record: RunRecord) -> None:
        """Machine-hours, GPU-hours and cost from the scenario's start until ``end``, s (the
        last job done)."""
        low = self.scenario.start
        for machine in self.machines.values():
            stop = machine.stopped_at if machine.stopped_at is not None else end
            hours = max(0.0, min(stop, end) - max(machine.requested_at, low)) / 3600
            record.machine_hours += hours
            if self.hardware[machine.hardware].gpu:
                record.gpu_hours += hours
            record.cost += hours * self.pools_file.pools[machine.hardware].price_per_hour
