"""``emp intelligence``: forecast demand, place models ahead of it, size the pools.

Any number of instances may run; one leads, by a renewed Redis lease
(``prediction.lease``; a killed leader is replaced within the lease time).
Every ``interval_seconds`` the leader:

1. reads new ``job_submitted`` events of every pool's event log (the pool is
   the one the router filed the job in; its models come from the job
   record's requirements, its predicted seconds from the routing decision)
   into the Forecaster, per (pool, model) and per pool. A new leader first
   re-reads the last ``recent_seconds`` of the log, so the recent rates
   survive a hand-over (the time-of-day profile does not: it is relearnt);
2. plans placements (``prediction.planner``) from the idle workers'
   residency and the warm counts, and publishes each directive to the
   pool's directive stream with a ``placement_directive`` event;
3. writes each pool's forecast and desired machines (``prediction.elastic``)
   to ``emp:{<pool>}:forecast`` and ``emp:{<pool>}:desired``, which expire
   when no leader renews them.

A tick's time is Redis' clock (one TIME call per tick), as the job events it
reads, the idle workers' heartbeat scores and the workers judging a
directive's expiry are: a leader whose host clock ran 3 min ahead saw no
idle worker, one 3 min behind issued directives already expired.

Bounded: events are read in batches of ``read_batch`` per stream and at
most ``max_events_per_tick`` per tick; the forecaster keeps at most
``max_keys`` keys (the longest quiet are forgotten); directive streams and
event logs are trimmed on every append.

Environment (defaults in brackets): ``EMP_INTELLIGENCE_INTERVAL_SECONDS``
[5], ``EMP_INTELLIGENCE_LEASE_SECONDS`` [15], ``EMP_INTELLIGENCE_INSTANCE``
[<hostname>-<pid>], ``EMP_INTELLIGENCE_HORIZON_SECONDS`` [300],
``EMP_INTELLIGENCE_MIN_EXPECTED`` [1], ``EMP_INTELLIGENCE_EVICT_BELOW``
[0.05], ``EMP_INTELLIGENCE_DIRECTIVES_PER_POOL`` [4],
``EMP_INTELLIGENCE_DIRECTIVE_TTL_SECONDS`` [60],
``EMP_INTELLIGENCE_MAX_KEYS`` [5000], ``EMP_INTELLIGENCE_RECENT_SECONDS``
[600], plus ``EMP_POOLS_FILE`` for the pools and their scaling settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capability_router.errors import EmpError
from capability_router.functions import redis_now_ms
from capability_router.keys import INTELLIGENCE_LEADER_KEY, Keys, idle_workers, known_namespaces
from capability_router.pool_view import read_loads
from capability_router.pools import PoolsFile, PoolsFileWatch
from capability_router.prediction.directives import EVICT, publish
from capability_router.prediction.elastic import (
    PoolForecast,
    desired_of,
    read_states,
    scaling_policies,
    write_desired,
)
from capability_router.prediction.forecast import Forecaster
from capability_router.prediction.lease import LOST, TAKEN, Lease
from capability_router.prediction.planner import PlacementSettings, PoolSnapshot, plan
from capability_router.registry import WorkerRegistry
from capability_router.requirements import normalize_requirements

logger = logging.getLogger("emp.intelligence")

#: Forecaster key of a pool's total arrivals (a model key names a model).
POOL_TOTAL = ""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise EmpError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):  # inf and nan passed, then failed a tick or every check
        raise EmpError(f"{name} must be a finite number, got {raw!r}")
    return value


def _env_int(name: str, default: int) -> int:
    value = float(_env_float(name, default))
    if not value.is_integer():  # 1.5 was cut to 1 without a word
        raise EmpError(f"{name} must be a whole number, got {value:g}")
    return int(value)


@dataclass(frozen=True)
class IntelligenceSettings:
    """Tunables of the service; ``from_env`` reads the variables of the module docstring."""

    #: Seconds between ticks.
    interval_seconds: float = 5.0
    #: Seconds the leader lease lasts unless renewed (a dead leader's replacement time).
    lease_seconds: float = 15.0
    #: This instance's name (a restart under the same name takes the lead back at once).
    instance: str = ""
    #: Most forecaster keys ((pool, model) pairs and pools).
    max_keys: int = 5000
    #: Time constant of the recent rate, seconds; also what a new leader re-reads.
    recent_seconds: float = 600.0
    #: Events read per stream per round trip, and at most per tick.
    read_batch: int = 1000
    max_events_per_tick: int = 20_000
    placement: PlacementSettings = field(default_factory=PlacementSettings)

    @classmethod
    def from_env(cls, **overrides: Any) -> IntelligenceSettings:
        """Settings from ``EMP_INTELLIGENCE_*``; EmpError names a bad value."""
        placement = PlacementSettings(
            horizon_seconds=_env_float("EMP_INTELLIGENCE_HORIZON_SECONDS", 300.0),
            min_expected=_env_float("EMP_INTELLIGENCE_MIN_EXPECTED", 1.0),
            evict_below=_env_float("EMP_INTELLIGENCE_EVICT_BELOW", 0.05),
            max_per_pool=_env_int("EMP_INTELLIGENCE_DIRECTIVES_PER_POOL", 4),
            directive_ttl_seconds=_env_float("EMP_INTELLIGENCE_DIRECTIVE_TTL_SECONDS", 60.0))
        values: dict[str, Any] = {
            "interval_seconds": _env_float("EMP_INTELLIGENCE_INTERVAL_SECONDS", 5.0),
            "lease_seconds": _env_float("EMP_INTELLIGENCE_LEASE_SECONDS", 15.0),
            "instance": os.environ.get("EMP_INTELLIGENCE_INSTANCE", "").strip(),
            "max_keys": _env_int("EMP_INTELLIGENCE_MAX_KEYS", 5000),
            "recent_seconds": _env_float("EMP_INTELLIGENCE_RECENT_SECONDS", 600.0),
            "placement": placement,
        }
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        settings = cls(**values)
        settings.check({**SETTING_NAMES, **{k: OPTION_NAMES.get(k, k) for k in given}})
        return settings

    def check(self, names: dict[str, str] | None = None) -> None:
        """EmpError naming the first bad setting by ``names`` (its variable, or option).

        A negative ``min_expected`` wanted every model seen warm, a negative
        ``evict_below`` never evicted and a zero directive TTL made each directive
        stale on arrival: all ran without a word before.
        """
        names = {**SETTING_NAMES, **(names or {})}
        place = self.placement
        limits: list[tuple[str, float, float, bool]] = [  # name, value, bound, bound allowed
            ("interval_seconds", self.interval_seconds, 0, False),
            ("lease_seconds", self.lease_seconds, 0, False),
            ("recent_seconds", self.recent_seconds, 0, False),
            ("max_keys", self.max_keys, 1, True),
            ("horizon_seconds", place.horizon_seconds, 0, False),
            ("min_expected", place.min_expected, 0, False),
            ("evict_below", place.evict_below, 0, True),
            ("max_per_pool", place.max_per_pool, 0, True),
            ("directive_ttl_seconds", place.directive_ttl_seconds, 0, False)]
        for name, value, bound, allowed in limits:
            # nan passed every comparison (an option's `--interval nan` ran; `--lease nan`
            # crashed in its first tick) and inf overflowed the lease's milliseconds
            if not math.isfinite(value):
                raise EmpError(f"{names[name]} must be a finite number, got {value:g}")
            if value < bound or (value == bound and not allowed):
                raise EmpError(f"{names[name]} must be {'>=' if allowed else '>'} {bound:g}, "
                               f"got {value:g}")
        if self.lease_seconds <= self.interval_seconds:
            raise EmpError(f"intelligence lease_seconds ({self.lease_seconds:g}) must be longer "
                           f"than interval_seconds ({self.interval_seconds:g}): "
                           f"{names['lease_seconds']}, {names['interval_seconds']}")


#: The variable that sets each field of IntelligenceSettings (and its PlacementSettings).
SETTING_NAMES = {
    "interval_seconds": "EMP_INTELLIGENCE_INTERVAL_SECONDS",
    "lease_seconds": "EMP_INTELLIGENCE_LEASE_SECONDS",
    "recent_seconds": "EMP_INTELLIGENCE_RECENT_SECONDS",
    "max_keys": "EMP_INTELLIGENCE_MAX_KEYS",
    "horizon_seconds": "EMP_INTELLIGENCE_HORIZON_SECONDS",
    "min_expected": "EMP_INTELLIGENCE_MIN_EXPECTED",
    "evict_below": "EMP_INTELLIGENCE_EVICT_BELOW",
    "max_per_pool": "EMP_INTELLIGENCE_DIRECTIVES_PER_POOL",
    "directive_ttl_seconds": "EMP_INTELLIGENCE_DIRECTIVE_TTL_SECONDS",
}
#: ``emp intelligence``'s options, for a value given there rather than in the environment.
OPTION_NAMES = {"interval_seconds": "--interval", "lease_seconds": "--lease",
                "instance": "--instance"}


class IntelligenceService:
    """One instance of ``emp intelligence``.

    :param client: a redis-py client (``decode_responses=True``).
    :param pools_file: the pools (names, order, preloads, scaling); None: the
        pools workers and producers used, default settings.
    :param settings: tunables.
    :param pools_watch: when given, the pools file is taken from it at each tick, so
        an edit applies without a restart (a bad edit keeps the last good version).
    """

    def __init__(self, client: Any, pools_file: PoolsFile | None,
                 settings: IntelligenceSettings | None = None,
                 pools_watch: PoolsFileWatch | None = None) -> None:
        self.client = client
        self.pools_file = pools_file
        self.pools_watch = pools_watch
        self.settings = settings or IntelligenceSettings()
        instance = self.settings.instance or f"{socket.gethostname()}-{os.getpid()}"
        self.lease = Lease(client, INTELLIGENCE_LEADER_KEY, instance,
                           int(self.settings.lease_seconds * 1000))
        self.leading = False
        self.forecaster = Forecaster(recent_seconds=self.settings.recent_seconds)
        self._cursors: dict[str, str] = {}
        self._clock = 0.0
        self._key_seen: dict[tuple[str, str], float] = {}
        self._mean_seconds: dict[str, float] = {}
        self._directed: dict[tuple[str, str], float] = {}
        #: Preloads still valid: (pool short of the model, model) -> issue times.
        self._in_flight: dict[tuple[str, str], list[float]] = {}
        #: Counters for logs and tests: events read, directives published.
        self.stats = {"events": 0, "directives": 0, "ticks": 0}

    # -- the loop -----------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; give the lease up on the way out."""
        logger.info("intelligence: %s started", self.lease.token)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception:  # Redis away, a bad record: log, try again next tick
                    logger.exception("intelligence: tick failed")
                stop.wait(self.settings.interval_seconds)
        finally:
            try:
                self.lease.release()
            except Exception:  # noqa: BLE001 - the lease expires anyway
                logger.debug("intelligence: could not release the lease", exc_info=True)

    def step(self, now: float | None = None) -> bool:
        """One tick at ``now`` (seconds; Redis' clock when not given); False when another
        instance leads (this one stands by)."""
        role = self.lease.hold()
        if role == LOST:
            if self.leading:
                logger.warning("intelligence: %s lost the lead", self.lease.token)
            self.leading = False
            return False
        now = redis_now_ms(self.client) / 1000 if now is None else now
        if role == TAKEN or not self.leading:
            logger.info("intelligence: %s leads", self.lease.token)
            self.leading = True
            self._start_leading()
        if self.pools_watch is not None:
            self.pools_file = self.pools_watch.current()
        pools = self.pool_names()
        self.read_arrivals(pools, now)
        self.place(pools, now)
        self.scale(pools, now)
        self.stats["ticks"] += 1
        return True

    def _start_leading(self) -> None:
        """Forget what an earlier lead of this process knew: the log is re-read from
        ``recent_seconds`` ago, and counting it again on top would double the rates."""
        self.forecaster = Forecaster(recent_seconds=self.settings.recent_seconds)
        self._cursors.clear()
        self._key_seen.clear()
        self._mean_seconds.clear()
        self._directed.clear()
        self._in_flight.clear()
        self._clock = 0.0

    # -- reading ------------------------------------------------------------

    def pool_names(self) -> list[str]:
        """The pools file's pools (smallest first), then every other pool ever used."""
        configured = list(self.pools_file.pools) if self.pools_file else []
        return configured + [n for n in known_namespaces(self.client) if n not in configured]

    def read_arrivals(self, pools: list[str], now: float) -> int:
        """Feed new ``job_submitted`` events to the forecaster; returns how many."""
        start = f"{int((now - self.settings.recent_seconds) * 1000)}-0"
        for pool in pools:
            self._cursors.setdefault(Keys(pool).events, start)
        arrivals: list[tuple[float, str, str, str, float | None]] = []
        read = 0
        while read < self.settings.max_events_per_tick:
            streams = list(self._cursors)
            with self.client.pipeline(transaction=False) as pipe:
                for stream in streams:  # one stream per read: pools live in different slots
                    pipe.xread({stream: self._cursors[stream]}, count=self.settings.read_batch)
                replies = pipe.execute()
            got = 0
            for stream, reply in zip(streams, replies, strict=True):
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        self._cursors[stream] = entry_id
                        got += 1
                        if fields.get("event") == "job_submitted":
                            arrivals.append(_arrival(stream, fields))
            read += got
            if got < self.settings.read_batch:
                break
        self._observe(arrivals)
        self.stats["events"] += len(arrivals)
        return len(arrivals)

    def _observe(self, arrivals: list[tuple[float, str, str, str, float | None]]) -> None:
        if not arrivals:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for _, pool, job_id, _, _ in arrivals:
                pipe.hmget(Keys(pool).job(job_id), "requirements", "predicted_ms")
            records = pipe.execute()
        for (t, pool, _, service, predicted), (requirements, predicted_ms) in sorted(
                zip(arrivals, records, strict=True), key=lambda pair: pair[0][0]):
            t = self._clock = max(t, self._clock)  # the forecaster's times never go back
            if predicted is None and predicted_ms:
                predicted = float(predicted_ms) / 1000
            if predicted is not None:
                before = self._mean_seconds.get(pool)
                self._mean_seconds[pool] = predicted if before is None else (
                    0.9 * before + 0.1 * predicted)
            for model in (POOL_TOTAL, *job_models(requirements, service)):
                self.forecaster.observe(t, (pool, model))
                self._key_seen[(pool, model)] = t
        self._cap_keys()

    def _cap_keys(self) -> None:
        excess = len(self._key_seen) - self.settings.max_keys
        if excess <= 0:
            return
        quietest = sorted(self._key_seen, key=self._key_seen.__getitem__)[:excess]
        for key in quietest:
            self.forecaster.forget(key)
            del self._key_seen[key]

    # -- placing ------------------------------------------------------------

    def rates(self, now: float) -> dict[tuple[str, str], float]:
        """Forecast arrivals per second of every (pool, model) seen."""
        return {key: self.forecaster.rate(now, key) for key in self._key_seen if key[1]}

    def place(self, pools: list[str], now: float) -> list[Any]:
        """Plan and publish this tick's directives; returns them."""
        rates = self.rates(now)
        snapshots = self.snapshots(pools, rates, now)
        cooldown = self.settings.placement.directive_ttl_seconds
        self._directed = {k: t for k, t in self._directed.items() if now - t < cooldown}
        self._in_flight = {k: kept for k, times in self._in_flight.items()
                           if (kept := [t for t in times if now - t < cooldown])}
        directives = plan(snapshots, rates, lambda pool, model: (pool, model) in self._key_seen,
                          self.settings.placement, int(now * 1000),
                          cooling=lambda pool, worker: (pool, worker) in self._directed,
                          in_flight={k: len(v) for k, v in self._in_flight.items()})
        published = []
        for directive in directives:
            directive_id = publish(self.client, directive, int(now * 1000))
            self._directed[(directive.pool, directive.worker)] = now
            if directive.action != EVICT:
                self._in_flight.setdefault(
                    (directive.for_pool or directive.pool, directive.model), []).append(now)
            published.append(dataclasses.replace(directive, id=directive_id))
            logger.info("intelligence: %s %s on %s/%s: %s", directive.action, directive.model,
                        directive.pool, directive.worker, directive.reason)
        self.stats["directives"] += len(published)
        return published

    def snapshots(self, pools: list[str], rates: Mapping[tuple[str, str], float],
                  now: float) -> list[PoolSnapshot]:
        """Each pool's idle workers' residency and its warm counts (two round trips)."""
        configured = self.pools_file.pools if self.pools_file else {}
        orders = {name: (configured[name].order if name in configured else 1000 + i)
                  for i, name in enumerate(pools)}
        demanded = {model for (_, model), rate in rates.items() if rate > 0}
        now_ms = int(now * 1000)
        with self.client.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.zrangebyscore(Keys(pool).idle, now_ms, "+inf")
            idle = {pool: sorted(idle_workers(members))
                    for pool, members in zip(pools, pipe.execute(), strict=True)}
        with self.client.pipeline(transaction=False) as pipe:
            for pool in pools:
                keys = Keys(pool)
                for worker in idle[pool]:
                    pipe.hgetall(keys.models(worker))
                for model in sorted(demanded):
                    pipe.zcard(keys.warm(model))
            replies = iter(pipe.execute())
        snapshots = []
        for pool in pools:
            residency = {worker: dict(next(replies)) for worker in idle[pool]}
            warm = {model: int(next(replies)) for model in sorted(demanded)}
            preload = configured[pool].preload_models if pool in configured else ()
            snapshots.append(PoolSnapshot(pool, orders[pool], residency, warm, preload,
                                          self._mean_seconds.get(pool, 0.0),
                                          configured=pool in configured))
        return snapshots

    # -- scaling ------------------------------------------------------------

    def scale(self, pools: list[str], now: float) -> dict[str, int]:
        """Write each pool's forecast and desired machines; returns the desired counts."""
        configured = self.pools_file.pools if self.pools_file else {}
        policies = scaling_policies(self.pools_file, pools)
        workers: dict[str, list[dict[str, Any]]] = {}
        for record in WorkerRegistry(self.client).workers():
            for pool in record.get("pools") or []:
                workers.setdefault(pool, []).append(record)
        loads = {pool: load for pool, (load, _) in read_loads(self.client, pools).items()}
        states = read_states(self.client, loads, workers, policies, now)
        ttl = int(max(60.0, 4 * self.settings.interval_seconds))
        desired = {}
        for pool in pools:
            policy = policies[pool]
            ahead = policy.startup_seconds if pool in configured else 0.0
            forecast = PoolForecast(
                self.forecaster.rate_ahead(now, (pool, POOL_TOTAL), ahead),
                self._mean_seconds.get(pool, 0.0), int(now * 1000))
            state = dataclasses.replace(states[pool], forecast=forecast)
            desired[pool] = desired_of(state, policy)
            write_desired(self.client, pool, desired[pool], forecast, ttl)
        return desired


def _arrival(stream: str, fields: Mapping[str, str]) -> tuple[float, str, str, str, float | None]:
    """(seconds, pool, job id, service, predicted seconds or None) of a job_submitted entry."""
    pool = stream.split("{", 1)[1].split("}", 1)[0]
    try:
        data = json.loads(fields.get("data") or "{}")
    except ValueError:
        data = {}
    routing = data.get("routing") if isinstance(data.get("routing"), dict) else {}
    predicted = routing.get("predicted_seconds")
    stamp = data.get("timestamp")
    t = float(stamp) / 1000 if isinstance(stamp, (int, float)) else 0.0  # 0: "now" (clamped)
    return (t, pool, fields.get("job_id") or data.get("job_id") or "",
            str(data.get("job_type") or ""),
            float(predicted) if isinstance(predicted, (int, float)) else None)


def job_models(requirements: Any, service: str) -> list[str]:
    """The models a job's requirements name for its service ([] when none or unreadable)."""
    try:
        value = json.loads(requirements) if isinstance(requirements, str) else requirements
        pos = normalize_requirements(value or {}, service)["pos"]
    except (ValueError, TypeError, EmpError):
        return []
    models = pos.get(f"models.{service}") or []
    models = [models] if isinstance(models, str) else models
    return [m for m in models if isinstance(m, str) and m and m != "all"]
