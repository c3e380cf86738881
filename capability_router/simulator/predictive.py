"""The predictive policy: forecast-driven preloads and the elastic scaler.

Both use the production pieces of ``capability_router.prediction``: the
``Forecaster`` (per pool and per (pool, model), fed each routed arrival;
for the synthetic day it first learns the day before, as a running service
would have) and ``desired_machines``.

Preloads, once a virtual minute per pool: a model is wanted warm on as many
workers as the forecast keeps busy with it over the next
``HORIZON_SECONDS`` (at least one when an arrival is expected); for each
model short of that, most expected first, an idle worker that does not hold
it loads it (the one that gets it fastest, holding the least wanted models).
The load takes its tier's time; the worker stays idle meanwhile (a job that
wakes it waits for the load) and reports the residency when done.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from capability_router.prediction.forecast import Forecaster
from capability_router.prediction.scaler import PoolDemand, ScalingPolicy, desired_machines
from capability_router.simulator.fleet import STARTUP_SECONDS
from capability_router.simulator.trace import DAY_SECONDS, TraceJob

if TYPE_CHECKING:
    from capability_router.simulator.engine import Simulation

#: Seconds of demand ahead that preloads prepare for.
HORIZON_SECONDS = 600.0
#: The scaler's wait target, seconds.
WAIT_TARGET_SECONDS = 10.0
#: Weight of a new job in the running mean of predicted run times.
MEAN_ALPHA = 0.05
TIER_RANK = {"gpu": 0, "ram": 1, "disk": 2, "remote": 3}


class Predictor:
    """Forecast, preloads and desired machines of one run."""

    def __init__(self, sim: Simulation, history: list[TraceJob] | None = None) -> None:
        self.sim = sim
        self.forecaster = Forecaster()
        #: Running mean predicted seconds per pool and per (pool, model).
        self.mean: dict[Any, float] = {}
        for job in history or []:
            pool = sim.hindsight_pool(job)
            if pool:
                self.observe(job.at - DAY_SECONDS, pool, job.models, job.run_seconds)

    def observe(self, t: float, pool: str, models: list[str], predicted: float) -> None:
        """One routed arrival."""
        self.forecaster.observe(t, pool)
        self._mean(pool, predicted)
        for model in models:
            self.forecaster.observe(t, (pool, model))
            self._mean((pool, model), predicted)

    def _mean(self, key: Any, value: float) -> None:
        before = self.mean.get(key)
        self.mean[key] = value if before is None else before + MEAN_ALPHA * (value - before)

    # -- preloads -------------------------------------------------------------

    def tick(self, t: float) -> None:
        if self.sim.policy.preload:
            for pool in self.sim.namespaces:
                self.preload_pool(t, pool)

    def wanted(self, t: float, pool: str) -> list[tuple[float, str, int]]:
        """(expected arrivals, model, warm copies wanted) of the pool, most expected first."""
        out = []
        for key in self.forecaster.keys():
            if not isinstance(key, tuple) or key[0] != pool:
                continue
            expected = self.forecaster.expected(t, key, HORIZON_SECONDS)
            if expected < 1.0:
                continue
            busy = expected * self.mean.get(key, 0.0) / HORIZON_SECONDS
            out.append((expected, key[1], max(1, math.ceil(busy))))
        out.sort(key=lambda item: (-item[0], item[1]))
        return out

    def preload_pool(self, t: float, pool: str) -> None:
        sim = self.sim
        idle = [w for w in sim.idle[pool].values()
                if w.job is None and w.busy_until <= sim.now and not w.stopped]
        if not idle:
            return
        wanted = self.wanted(t, pool)
        value = {model: expected for expected, model, _ in wanted}
        live = [w for w in sim.workers.values() if w.pool == pool and not w.stopped]
        for _, model, copies in wanted:
            if not idle:
                return
            warm = sum(1 for w in live if model in w.cache.tiers["gpu"])
            for _ in range(copies - warm):
                candidates = [w for w in idle if model not in w.cache.tiers["gpu"]]
                if not candidates:
                    break
                best = min(candidates, key=lambda w: (
                    TIER_RANK[w.cache.tier_of(model)],
                    sum(value.get(m, 0.0) for m in w.cache.tiers["gpu"]), w.id))
                idle.remove(best)
                sim.preload(best, model)

    # -- the elastic scaler ---------------------------------------------------

    def desired(self, t: float, live: dict[str, int]) -> dict[str, int]:
        """Machines per pool from ``desired_machines`` (the fleet caps them)."""
        sim = self.sim
        out = {}
        for pool in sim.namespaces:
            pending = sim.pending[pool]
            oldest = next(iter(pending.values()), None)
            peak = sim.scenario.machines_at(t)  # the fleet keeps the sum within it
            # One job uses one worker: a pending job counts for at most the wait
            # target, else a single pending 10-minute video asks for 60 machines
            # (desired_machines clears the backlog within the wait target).
            demand = PoolDemand(
                pending_seconds=sum(min(p, WAIT_TARGET_SECONDS) for _, p in pending.values()),
                arrival_rate=self.forecaster.rate(t, pool),
                mean_job_seconds=self.mean.get(pool, 0.0),
                live_machines=live.get(pool, 0),
                oldest_wait_seconds=(t - oldest[0]) if oldest else 0.0)
            policy = ScalingPolicy(
                wait_target_seconds=WAIT_TARGET_SECONDS, min_machines=1, max_machines=peak,
                startup_seconds=STARTUP_SECONDS, scale_down_step=max(1, math.ceil(peak / 50)))
            out[pool] = desired_machines(demand, policy)
        return out
