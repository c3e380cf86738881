"""The router: which pool a job that names none is filed in, decided at submit.

In order (each step only among pools that can run the job):

1. **Hard requirements.** A pool runs the job's service (its ``services``)
   and has the GPU memory it asks for (``hardware.gpu_memory_gb`` at most the
   pool's max; a CPU-only pool none). No pool can: the job is refused
   (``InvalidJob``), nothing written.
2. **Predicted duration** (``capability_router.duration``). The pools whose
   ``durations_seconds`` hold the prediction fit; none does: the one whose
   range is nearest (on a tie, the bigger).
3. **Warm models.** Among the fitting pools, one where the job's models are
   warm (a live worker has them in GPU memory, ``P.."warm:"..model``, or the
   pool pre-loads them) is preferred; else the smallest.
4. **Live capacity.** A pool without a live worker is passed over for the
   nearest bigger one that has some (when none has, the job waits where it fits,
   and its reason says so).
5. **Spill-over.** When the chosen pool is saturated (expected wait above
   ``[routing] spill_wait_seconds``) and a bigger pool that can run the job
   has an idle worker, the job goes to the nearest such pool. Never to a pool
   that cannot run it, never to a smaller one.

Expected wait of a pool: 0 while a worker of it is idle, else the predicted
seconds of its unfinished jobs (``P.."load"``) per live worker
(``P.."workers"``). Pool state is read in one pipelined round trip and
reused for ``CACHE_SECONDS``, so most submits make no extra Redis call.

The decision is stored on the job as ``routing`` (JSON: pool,
predicted_seconds, predicted_from ("prior": the pools file's guess, nothing
learnt yet; "learned") and learned_runs, reason, alternatives), with
``predicted_ms``, ``duration_key`` and ``work_units`` for the duration model
and the pool's load.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from capability_router.duration import (
    Estimate,
    duration_key,
    job_size,
    parse_learnt,
    pooled,
    predict,
)
from capability_router.errors import Unroutable
from capability_router.functions import redis_now_ms
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.pools import Pool, PoolsFile

#: Reads a payload's size fields (``workflow_size.comfyui_size_fields``, say).
SizeFields = Callable[[Mapping[str, Any]], Mapping[str, Any]]

#: Seconds pool state (load, live and idle workers, warm models, learnt durations) is reused.
CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class PoolLoad:
    """What the router reads of one pool's state."""

    #: Workers whose heartbeat has not expired.
    live: int
    #: Workers idle now (an unexpired idle mark: their last claim found nothing).
    idle: int
    #: Predicted seconds of the pool's unfinished jobs (pending and running).
    unfinished_seconds: float

    @property
    def wait_seconds(self) -> float:
        """Expected wait of a new job: 0 with an idle worker, inf without a live one."""
        if self.idle > 0:
            return 0.0
        if self.live <= 0:
            return math.inf
        return self.unfinished_seconds / self.live

    def as_dict(self) -> dict[str, Any]:
        wait = self.wait_seconds
        return {"live_workers": self.live, "idle_workers": self.idle,
                "unfinished_seconds": round(self.unfinished_seconds, 3),
                "expected_wait_seconds": round(wait, 3) if math.isfinite(wait) else None}


@dataclass(frozen=True)
class Decision:
    """Where a job goes, and why."""

    pool: str
    estimate: Estimate
    reason: str
    #: The other pools: {pool, expected_wait_seconds, note (why not this one)}.
    alternatives: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        """The ``routing`` field of the job record."""
        return {"pool": self.pool, "predicted_seconds": round(self.estimate.seconds, 3),
                "predicted_from": self.estimate.source, "learned_runs": self.estimate.runs,
                "reason": self.reason, "alternatives": self.alternatives}

    def record_fields(self) -> dict[str, str]:
        return {"routing": json.dumps(self.as_json(), separators=(",", ":")),
                **self.estimate.record_fields()}


def _wait_text(seconds: float) -> str:
    return "no live worker" if not math.isfinite(seconds) else f"expected wait {seconds:.3g} s"


class Router:
    """Decides pools from a pools file and the pools' live state in Redis."""

    def __init__(self, client: Any, pools_file: PoolsFile,
                 cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] | None = None) -> None:
        self.client = client
        self.pools_file = pools_file
        self.pools = pools_file.pools
        self.cache_seconds = cache_seconds
        #: Seconds since the epoch, for live marks and the cache; the simulator passes
        #: its virtual clock so the router sees the pools as of virtual time.
        self.clock = clock
        #: (kind, name) -> (expires at, value); kinds: load, dur, warm.
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}

    # -- reading pool state ---------------------------------------------------

    def _read(self, wanted: list[tuple[str, ...]]) -> dict[tuple[str, ...], Any]:
        """Cached values of ``wanted`` items; the missing ones in one pipelined round trip."""
        now = self.clock() if self.clock else time.monotonic()
        out: dict[tuple[str, ...], Any] = {}
        missing = []
        for item in wanted:
            hit = self._cache.get(item)
            if hit is not None and hit[0] > now:
                out[item] = hit[1]
            else:
                missing.append(item)
        if not missing:
            return out
        # Redis' clock, which heartbeats and idle marks are scored on (a test's or the
        # simulator's clock when given).
        now_ms = (int(self.clock() * 1000) if self.clock else redis_now_ms(self.client))
        with self.client.pipeline(transaction=False) as pipe:
            for item in missing:
                if item[0] == "load":
                    keys = Keys(item[1])
                    pipe.zcount(keys.workers, now_ms, "+inf")
                    pipe.zcount(keys.idle, now_ms, "+inf")
                    pipe.hget(keys.load, "unfinished_ms")
                elif item[0] == "dur":
                    for pool in self.pools:
                        pipe.hget(Keys(pool).durations, item[1])
                else:  # warm
                    pipe.zcard(Keys(item[1]).warm(item[2]))
            replies = iter(pipe.execute())
        if len(self._cache) > 10_000:
            self._cache.clear()
        expires = now + self.cache_seconds
        for item in missing:
            if item[0] == "load":
                live, idle, unfinished = next(replies), next(replies), next(replies)
                value: Any = PoolLoad(int(live), int(idle),
                                      max(0.0, float(unfinished or 0) / 1000))
            elif item[0] == "dur":
                value = pooled(parse_learnt(next(replies)) for _ in self.pools)
            else:
                value = int(next(replies))
            self._cache[item] = (expires, value)
            out[item] = value
        return out

    def loads(self) -> dict[str, PoolLoad]:
        """Every pool's load (cached)."""
        state = self._read([("load", name) for name in self.pools])
        return {name: state[("load", name)] for name in self.pools}

    # -- deciding -------------------------------------------------------------

    @staticmethod
    def why_not(pool: Pool, service: str, gpu_memory_gb: float | None) -> str | None:
        """Why ``pool`` cannot run the job at all, or None when it can (no Redis read)."""
        if not pool.runs_service(service):
            return f"cannot run: does not run service {service}"
        if gpu_memory_gb:
            if not pool.gpu:
                return f"cannot run: needs {gpu_memory_gb:g} GB GPU memory, pool is CPU-only"
            if gpu_memory_gb > pool.gpu_memory_gb[1]:
                return (f"cannot run: needs {gpu_memory_gb:g} GB GPU memory, pool has at most "
                        f"{pool.gpu_memory_gb[1]:g}")
        return None

    def estimate(self, service: str, models: list[str], payload: Mapping[str, Any] | None,
                 features: Mapping[str, float] | None) -> tuple[Estimate, dict]:
        """The job's predicted run time, and the pool state read with it."""
        size = job_size(payload, features or {})
        key = duration_key(service, models, size.features)
        wanted = [("dur", key), *(("load", p) for p in self.pools),
                  *(("warm", p, m) for p in self.pools for m in models)]
        state = self._read(wanted)
        prior = self.pools_file.priors.seconds_per_unit(service)
        return predict(key, size, state[("dur", key)], prior), state

    def decide(self, service: str, job_class: Mapping[str, Any],
               payload: Mapping[str, Any] | None,
               features: Mapping[str, float] | None = None) -> Decision:
        """The pool of a job (see the module docstring); raises Unroutable (an InvalidJob)
        if none can run it."""
        pos = job_class.get("pos") or {}
        models = list(pos.get(f"models.{service}") or [])
        gpu_memory = pos.get("hardware.gpu_memory_gb")
        gpu_memory = float(gpu_memory) if isinstance(gpu_memory, (int, float)) else None
        estimate, state = self.estimate(service, models, payload, features)
        seconds = estimate.seconds
        loads = {name: state[("load", name)] for name in self.pools}
        notes: dict[str, str] = {}
        eligible: list[Pool] = []
        for pool in self.pools.values():
            refusal = self.why_not(pool, service, gpu_memory)
            if refusal:
                notes[pool.name] = refusal
            else:
                eligible.append(pool)
        if not eligible:
            raise Unroutable("no pool can run this job: " + "; ".join(
                f"{name}: {note.removeprefix('cannot run: ')}" for name, note in notes.items()))

        def warm(pool: Pool) -> bool:
            return bool(models) and all(
                m in pool.preload_models or state[("warm", pool.name, m)] > 0 for m in models)

        fitting = [p for p in eligible if p.fits_duration(seconds)]
        for pool in eligible:
            if pool not in fitting:
                low, high = pool.durations_seconds
                notes[pool.name] = f"predicted {seconds:.3g} s is outside {low:g}-{high:g} s"
        if fitting:
            chosen = next((p for p in fitting if warm(p)), fitting[0])
            low, high = chosen.durations_seconds
            reason = f"predicted {seconds:.3g} s fits {chosen.name} ({low:g}-{high:g} s)"
            if warm(chosen):
                reason += "; models warm there"
            for pool in fitting:
                if pool is not chosen:
                    notes[pool.name] = ("fits too; models warm in " + chosen.name
                                        if warm(chosen) and not warm(pool)
                                        else "fits too; bigger than needed"
                                        if pool.order > chosen.order else "fits too")
        else:
            def distance(pool: Pool) -> tuple[float, int]:
                low, high = pool.durations_seconds
                return (low - seconds if seconds < low else seconds - high), -pool.order

            chosen = min(eligible, key=distance)
            low, high = chosen.durations_seconds
            reason = (f"predicted {seconds:.3g} s fits no pool that can run it; {chosen.name} "
                      f"({low:g}-{high:g} s) is the nearest")
        if loads[chosen.name].live <= 0:
            bigger = [p for p in eligible if p.order > chosen.order and loads[p.name].live > 0]
            if bigger:
                notes[chosen.name] = "no live worker"
                reason = f"{chosen.name} has no live worker ({reason}); nearest bigger pool"
                chosen = bigger[0]
            else:  # the job waits for a machine of this pool: say so, or nothing would
                reason += ("; no live worker there nor in a bigger pool that can run it: "
                           "waits for one")
        spill = self.pools_file.routing.spill_wait_seconds
        wait = loads[chosen.name].wait_seconds
        if wait > spill and math.isfinite(wait):
            idle_bigger = [p for p in eligible
                           if p.order > chosen.order and loads[p.name].idle > 0]
            if idle_bigger:
                target = idle_bigger[0]
                notes[chosen.name] = f"saturated: {_wait_text(wait)} > {spill:g} s"
                reason = (f"spilled over from {chosen.name} ({_wait_text(wait)} > {spill:g} s) "
                          f"to {target.name} ({loads[target.name].idle} idle worker(s)); "
                          f"{reason}")
                chosen = target
            else:
                reason += f"; {_wait_text(wait)}, no bigger pool that can run it is idle"
        alternatives = []
        for name in self.pools:
            if name != chosen.name:
                other = loads[name].wait_seconds
                alternatives.append({
                    "pool": name, "note": notes.get(name, ""),
                    "expected_wait_seconds": round(other, 3) if math.isfinite(other) else None})
        return Decision(chosen.name, estimate, reason, alternatives)

    def keep(self, pool: str, service: str, job_class: Mapping[str, Any],
             payload: Mapping[str, Any] | None,
             features: Mapping[str, float] | None = None) -> Decision:
        """A job that names its pool keeps it; its prediction is still recorded."""
        pos = job_class.get("pos") or {}
        models = list(pos.get(f"models.{service}") or [])
        estimate, _ = self.estimate(service, models, payload, features)
        return Decision(pool, estimate, "pool named by the job", [])

    def route(self, spec: JobSpec, features: Mapping[str, float] | None = None,
              size_fields: SizeFields | None = None) -> JobSpec:
        """Decide (or keep) the spec's pool and put the decision on it; returns the spec.

        ``size_fields`` reads the size fields out of the payload, for a job type whose
        size is not at the payload's top level (``workflow_size``); None: the payload.
        """
        if spec.routing is not None:
            return spec
        sized = spec.payload if size_fields is None else size_fields(spec.payload)
        if spec.pool_named:
            decision = self.keep(spec.pool, spec.service, spec.job_class, sized, features)
        else:
            decision = self.decide(spec.service, spec.job_class, sized, features)
        spec.route(decision.pool, decision.record_fields())
        return spec
