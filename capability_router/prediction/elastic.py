"""Elastic pools: desired machines per pool from live state, the forecast and the pool's policy.

``desired_machines`` (``prediction.scaler``) decides; this module gathers its
inputs from Redis, so ``/api/pools``, the monitor's Prometheus gauge
``emp_pool_desired_machines`` and the intelligence leader (which writes
``emp:{<pool>}:desired`` for the Pools page) give the same number:

* pending predicted work: the pool's ``unfinished_seconds`` (predicted seconds
  of pending and running jobs: counting the running ones errs towards
  clearing the queue sooner), and how many jobs that is (one job, one
  worker: the backlog asks for no more workers than unfinished jobs);
* the forecast: arrivals per second and mean predicted job seconds, as the
  leader last wrote them to ``emp:{<pool>}:forecast`` for when a new machine
  would be up (``startup_seconds`` ahead); none (0) while no leader runs, so
  the backlog alone sizes the pool;
* live machines: distinct ``machine_id`` of the pool's live workers (workers
  that name none count ``workers_per_machine`` to a machine);
* the oldest wait: age of the pool's oldest pending job (scale-down is held
  while it exceeds the wait target and no worker of the pool is idle).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from capability_router.functions import redis_now_ms
from capability_router.keys import Keys
from capability_router.pools import PoolsFile
from capability_router.prediction.scaler import PoolDemand, ScalingPolicy, desired_machines
from capability_router.routing import PoolLoad

#: A forecast older than this (seconds) is ignored: its leader is gone.
FORECAST_MAX_AGE_SECONDS = 120.0

#: The scaling of a pool the pools file in force does not name (removed from it while
#: it held jobs, a typo in a job's pool, workers started with a pool of their own): no
#: machines. Its own ``max_machines`` left with its entry in the file; the defaults'
#: 50 asked for machines of a pool no operator configured.
UNCONFIGURED = ScalingPolicy(min_machines=0, max_machines=0)


def scaling_policies(pools_file: PoolsFile | None, pools: Iterable[str],
                     ) -> dict[str, ScalingPolicy]:
    """Each pool's scaling: the pools file's, ``UNCONFIGURED`` for a pool it does not
    name; the defaults for every pool while no pools file is in force (routing off)."""
    if pools_file is None:
        return {pool: ScalingPolicy() for pool in pools}
    return {pool: pools_file.pools[pool].scaling if pool in pools_file.pools
            else UNCONFIGURED for pool in pools}


@dataclass(frozen=True)
class PoolForecast:
    """The leader's forecast of a pool."""

    #: Arrivals per second expected when a new machine would be up.
    arrival_rate: float = 0.0
    #: Mean predicted seconds of an arriving job.
    mean_job_seconds: float = 0.0
    #: When it was written (ms since the epoch); 0: no forecast.
    at_ms: int = 0

    def fields(self) -> dict[str, str]:
        return {"arrival_rate": f"{self.arrival_rate:.6g}",
                "mean_job_seconds": f"{self.mean_job_seconds:.6g}", "at": str(self.at_ms)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> PoolForecast:
        try:
            return cls(float(fields.get("arrival_rate") or 0),
                       float(fields.get("mean_job_seconds") or 0), int(fields.get("at") or 0))
        except ValueError:
            return cls()


@dataclass(frozen=True)
class PoolState:
    """What the scaler reads of one pool now."""

    load: PoolLoad
    forecast: PoolForecast
    live_machines: int
    oldest_wait_seconds: float
    backlog_jobs: int | None = None

    def demand(self) -> PoolDemand:
        return PoolDemand(
            pending_seconds=self.load.unfinished_seconds,
            arrival_rate=self.forecast.arrival_rate,
            mean_job_seconds=self.forecast.mean_job_seconds,
            live_machines=self.live_machines, oldest_wait_seconds=self.oldest_wait_seconds,
            backlog_jobs=self.backlog_jobs, idle_workers=self.load.idle)


def count_machines(worker_records: Iterable[Mapping[str, Any]], workers_per_machine: int) -> int:
    """Machines behind a pool's live workers (see the module docstring)."""
    named: set[str] = set()
    anonymous = 0
    for record in worker_records:
        machine = record.get("machine_id") or ""
        if machine:
            named.add(machine)
        else:
            anonymous += 1
    return len(named) + math.ceil(anonymous / max(1, workers_per_machine))


def read_states(client: Any, loads: Mapping[str, PoolLoad],
                workers: Mapping[str, list[Mapping[str, Any]]],
                policies: Mapping[str, ScalingPolicy], now: float | None = None,
                ) -> dict[str, PoolState]:
    """Every pool's scaler inputs, in one pipelined round trip besides ``loads``.

    ``now`` (seconds) defaults to Redis' clock, which the leader stamps its forecasts
    with and the queue its pending jobs: a reader on a host 3 min ahead took every
    fresh forecast for a stale one and the oldest job for 3 min older."""
    now = redis_now_ms(client) / 1000 if now is None else now
    pools = list(loads)
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            keys = Keys(pool)
            pipe.hgetall(keys.forecast)
            pipe.zrange(keys.status_index("pending"), 0, 0, withscores=True)
            for status in ("pending", "assigned", "in_progress"):  # the unfinished jobs
                pipe.zcard(keys.status_index(status))
        replies = iter(pipe.execute())
    states = {}
    for pool in pools:
        forecast = PoolForecast.from_fields(next(replies) or {})
        if now - forecast.at_ms / 1000 > FORECAST_MAX_AGE_SECONDS:
            forecast = PoolForecast()
        oldest = next(replies)
        oldest_wait = max(0.0, now - oldest[0][1] / 1000) if oldest else 0.0
        backlog_jobs = sum(int(next(replies) or 0) for _ in range(3))
        policy = policies.get(pool) or ScalingPolicy()
        states[pool] = PoolState(loads[pool], forecast,
                                 count_machines(workers.get(pool, []), policy.workers_per_machine),
                                 oldest_wait, backlog_jobs)
    return states


def desired_of(state: PoolState, policy: ScalingPolicy | None) -> int:
    """Desired machines of one pool (``prediction.scaler.desired_machines``)."""
    return desired_machines(state.demand(), policy or ScalingPolicy())


def write_desired(client: Any, pool: str, desired: int, forecast: PoolForecast,
                  ttl_seconds: int) -> None:
    """Store the leader's decision and forecast; both expire when no leader renews them."""
    keys = Keys(pool)
    with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.desired, str(int(desired)), ex=ttl_seconds)
        pipe.hset(keys.forecast, mapping=forecast.fields())
        pipe.expire(keys.forecast, ttl_seconds)
        pipe.execute()
