"""Which idle worker should load or drop which model: the placement plan of one tick.

Pure: the leader (``prediction.service``) reads the state, this decides, the
leader publishes. Per pool, models are taken by expected arrivals over the
horizon, most first. A model expected at least ``min_expected`` times wants
``max(1, ceil(rate x mean job seconds))`` warm workers (as many as its
arrivals keep busy). When fewer hold it in the GPU, an idle worker that has
it nearer than remote (RAM, then disk, then a download) is told to preload
it, making room from its GPU models worth the least (each worth its own
pool's demand plus that of smaller pools, which spill over to it). When the
pool has no such idle worker, a bigger pool's idle worker is asked to keep
it warm (cross-pool: the router spills a saturated pool's jobs upwards and
warm-first claims find it there). A GPU model of an idle worker that has
seen arrivals before but expects fewer than ``evict_below`` over the
horizon, and that its pool does not preload, is evicted: its memory is
better free for the next model. Each worker gets at most one directive
per tick, and none while it still has a recent one (``cooldown``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from capability_router.prediction.directives import EVICT, KEEP, PRELOAD, Directive

#: Nearer tiers first: the cheapest preload.
_TIER_COST = {"ram": 0, "disk": 1, "remote": 2}


@dataclass(frozen=True)
class PlacementSettings:
    """Tunables of the plan (``emp intelligence``'s environment, README)."""

    #: Seconds ahead the demand is counted over.
    horizon_seconds: float = 300.0
    #: Arrivals over the horizon that make a model worth preloading.
    min_expected: float = 1.0
    #: Below this many arrivals over the horizon a seen model is evicted from idle GPUs.
    evict_below: float = 0.05
    #: Most directives per pool per tick.
    max_per_pool: int = 4
    #: Seconds a directive stays valid (a worker reading it later ignores it).
    directive_ttl_seconds: float = 60.0


@dataclass
class PoolSnapshot:
    """One pool as the leader read it this tick."""

    name: str
    #: Size rank (the pools file's ``order``): spill-over goes to a higher one.
    order: int
    #: Idle worker -> its residency {model: tier}.
    idle: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Model -> workers holding it in the GPU (for the models with demand).
    warm: dict[str, int] = field(default_factory=dict)
    #: Models the pool preloads (never evicted by a directive).
    preload_models: tuple[str, ...] = ()
    #: Mean predicted seconds of its jobs.
    mean_job_seconds: float = 0.0
    #: The pools file names it: the router spills over only between such pools.
    configured: bool = True


#: (pool, model) -> arrivals per second forecast.
Rates = Mapping[tuple[str, str], float]


def plan(pools: list[PoolSnapshot], rates: Rates, seen: Callable[[str, str], bool],
         settings: PlacementSettings, now_ms: int,
         cooling: Callable[[str, str], bool] = lambda pool, worker: False,
         in_flight: Mapping[tuple[str, str], int] | None = None) -> list[Directive]:
    """The directives of one tick (see the module docstring).

    :param rates: forecast arrivals per second per (pool, model).
    :param seen: whether the forecaster has seen arrivals of (pool, model).
    :param cooling: whether a (pool, worker) had a directive too recently.
    :param in_flight: preloads (or keeps) for (pool short of it, model) issued and still
        valid: counted as warm, so a slow load is not asked of a second worker.
    """
    in_flight = in_flight or {}
    by_order = sorted(pools, key=lambda p: p.order)
    horizon = settings.horizon_seconds
    expires = now_ms + int(settings.directive_ttl_seconds * 1000)
    used: set[tuple[str, str]] = set()
    out: list[Directive] = []
    count: dict[str, int] = {}

    def worth(pool: PoolSnapshot, model: str) -> float:
        """Arrivals over the horizon a worker of ``pool`` may serve: its own and smaller pools'."""
        if not pool.configured:
            return rates.get((pool.name, model), 0.0) * horizon
        return sum(rates.get((p.name, model), 0.0) for p in by_order
                   if p.configured and p.order <= pool.order) * horizon

    def free(pool: PoolSnapshot, worker: str) -> bool:
        return ((pool.name, worker) not in used and not cooling(pool.name, worker)
                and count.get(pool.name, 0) < settings.max_per_pool)

    def give(directive: Directive) -> None:
        used.add((directive.pool, directive.worker))
        count[directive.pool] = count.get(directive.pool, 0) + 1
        out.append(directive)

    def candidate(pool: PoolSnapshot, model: str) -> tuple[str, str] | None:
        """The idle worker of ``pool`` best placed to load ``model``, and its tier."""
        options = [(_TIER_COST[tiers[model]], _gpu_worth(pool, tiers, worth), worker)
                   for worker, tiers in pool.idle.items()
                   if tiers.get(model) in _TIER_COST and free(pool, worker)]
        if not options:
            return None
        _, _, worker = min(options)
        return worker, pool.idle[worker][model]

    for pool in by_order:
        models = sorted(((rate * horizon, model) for (name, model), rate in rates.items()
                         if name == pool.name and model), reverse=True)
        for expected, model in models:
            if expected < settings.min_expected:
                break
            want = max(1, math.ceil(rates[(pool.name, model)] * pool.mean_job_seconds))
            have = pool.warm.get(model, 0) + in_flight.get((pool.name, model), 0)
            for _ in range(max(0, want - have)):
                why = (f"{model}: {expected:.1f} arrivals expected in {horizon:g}s in "
                       f"{pool.name}, {have} warm of {want} wanted")
                found = candidate(pool, model)
                if found is not None:
                    worker, tier = found
                    give(Directive(PRELOAD, model, pool.name, worker,
                                   f"{why}; {worker} is idle with it on {tier}",
                                   make_room_from=_room(pool, worker, model, worth),
                                   issued_ms=now_ms, expires_ms=expires))
                    have += 1
                    continue
                helper = (_bigger_pool_helper(by_order, pool, model, candidate)
                          if pool.configured else None)
                if helper is None:
                    break
                bigger, worker, tier = helper
                give(Directive(KEEP, model, bigger.name, worker,
                               f"{why} and none of its idle workers has it; {worker} of "
                               f"{bigger.name} (idle, {tier}) keeps it warm for spill-over",
                               for_pool=pool.name,
                               make_room_from=_room(bigger, worker, model, worth),
                               issued_ms=now_ms, expires_ms=expires))
                have += 1
    for pool in by_order:
        for worker, tiers in pool.idle.items():
            if not free(pool, worker):
                continue
            stale = sorted(m for m, tier in tiers.items() if tier == "gpu"
                           and m not in pool.preload_models and seen(pool.name, m)
                           and worth(pool, m) < settings.evict_below)
            if stale:
                give(Directive(EVICT, stale[0], pool.name, worker,
                               f"{stale[0]}: {worth(pool, stale[0]):.2f} arrivals expected in "
                               f"{horizon:g}s for {pool.name} (below {settings.evict_below:g})"
                               f"; frees {worker}'s GPU", issued_ms=now_ms, expires_ms=expires))
    return out


def _gpu_worth(pool: PoolSnapshot, tiers: Mapping[str, str],
               worth: Callable[[PoolSnapshot, str], float]) -> float:
    return sum(worth(pool, m) for m, tier in tiers.items() if tier == "gpu")


def _room(pool: PoolSnapshot, worker: str, model: str,
          worth: Callable[[PoolSnapshot, str], float]) -> tuple[str, ...]:
    """The worker's GPU models worth less than ``model``, least first: evicted first."""
    mine = worth(pool, model)
    gpu = [(worth(pool, m), m) for m, tier in pool.idle[worker].items()
           if tier == "gpu" and m != model]
    return tuple(m for value, m in sorted(gpu) if value < mine)


def _bigger_pool_helper(
        by_order: list[PoolSnapshot], pool: PoolSnapshot, model: str,
        candidate: Callable[[PoolSnapshot, str], tuple[str, str] | None],
) -> tuple[PoolSnapshot, str, str] | None:
    for bigger in by_order:
        if bigger.order <= pool.order or not bigger.configured:
            continue
        if bigger.warm.get(model, 0) > 0:  # warm there already: spill-over finds it
            return None
        found = candidate(bigger, model)
        if found is not None:
            return bigger, found[0], found[1]
    return None
