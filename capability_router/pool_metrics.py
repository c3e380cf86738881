"""Pool observability: per-minute series read back from what the claim functions record.

``emp_claim``, ``emp_complete`` and every function that fails a job (``lua/emp.lua``,
``observe``, ``fail_job``: ``emp_fail``, ``emp_ack``, ``emp_requeue``, ``emp_sweep``)
write each pool's figures into one Redis hash per minute, in a ring of
``OBS_SLOTS`` (1,500 minutes, 25 h) slots, with the time they are given (the
simulator's virtual time too): nothing here re-computes a claim. This module
only reads the ring and turns counters into the figures an operator watches.

Definitions (per minute, and over a window by summing the minutes):

* ``utilization``: busy worker-seconds / live worker-seconds. Busy: jobs
  assigned or running (a worker running N jobs at once, ``-c N``, counts N, so
  a pool of such workers can read above 1, up to N); live: workers with an
  unexpired heartbeat in the pool. Both are integrated exactly between
  observations, so a 10-minute job is busy in each of its minutes.
* ``queue_efficiency``: total wait / total run time (wait of jobs claimed
  in the minute, run time of jobs completed in it); lower is better.
* ``wait_p95_seconds``: 95th percentile of claimed jobs' waits, from fixed
  buckets (``metrics.WAIT_BOUNDS``), linearly interpolated within a bucket.
* ``hit_rate``: claims that found every model of the job in the worker's
  GPU ("warm") / claims of jobs with models on workers that report a
  residency (warm + disk + download). "disk": every model on the machine (RAM
  or disk), some not in the GPU; "download": some model not on the machine.
  Jobs without models ("none") and workers that report no residency
  ("unreported") are counted apart and left out of the rate.
* ``routing_accuracy``: completions of routed jobs (the record carries the
  router's ``routing`` decision) whose run time was within a factor 2 of the
  router's prediction (``predicted_ms``) / routed completions;
  ``routing_pool_accuracy``: of those, the share that ran in the pool the router
  chose. Today that is 1 by construction (a routed job is filed in the chosen
  pool and claims, retries and escalations stay there); it is kept as a check
  for when jobs can move between pools. "The best pool in hindsight" (the
  simulator's measure) is not known here.
* ``throughput``: jobs completed in the minute; ``failed`` beside it: every job that
  ended failed, once (``fail_job`` in ``emp.lua``): failures a run reported
  (``emp_fail``), attempts acknowledged without an outcome (counted since library
  release 29), and jobs the queue gave up on (attempts used up, an ``attempts`` count
  Redis cannot increment; since release 28).
* ``queue_depth``, ``busy``, ``live_workers``, ``desired``: the last value an
  observation saw in the minute (pending jobs, running jobs, live workers, the
  scaler's ``P.."desired"`` or null), sampled at most once a second. A claim
  that finds nothing (an idle worker's) only updates a minute already
  started, so idle workers create no keys; a minute without a job's
  observation keeps the previous gauges, filled in by the next one (up to an
  hour back: a pool idle for longer shows a gap before that).
"""

from __future__ import annotations

import math
from typing import Any

from capability_router.errors import EmpError
from capability_router.functions import redis_now_ms
from capability_router.keys import OBS_SLOTS, Keys, check_namespace
from capability_router.metrics import WAIT_BOUNDS, le_text

#: ``?window=`` values and their length in minutes.
WINDOWS: dict[str, int] = {"1h": 60, "24h": 1440}
#: Minutes the Prometheus gauges cover (the current one included).
PROMETHEUS_MINUTES = 5
#: Share of claims of the wait percentile served.
WAIT_QUANTILE = 0.95

#: Model-hit kinds a claim is counted under (``model_hit`` in ``emp.lua``).
HIT_KINDS = ("warm", "disk", "download", "none", "unreported")
#: Counters of a minute hash, summed over a window.
COUNTERS = ("claims", "wait_ms", "done", "run_ms", "failed", "routed", "route_pool_ok",
            "route_time_ok", "busy_ms", "live_ms", *(f"hit:{k}" for k in HIT_KINDS))
#: Gauges of a minute hash (last value seen in the minute).
GAUGES = ("depth", "busy", "live", "desired")
_WAIT_FIELDS = [f"wait:{le_text(b)}" for b in (*WAIT_BOUNDS, math.inf)]


class UnknownWindow(EmpError, ValueError):
    """A ``window`` other than those of ``WINDOWS``."""


def parse_window(window: str | None) -> int:
    """Minutes of a ``?window=`` value (default 1h); UnknownWindow naming the allowed ones."""
    if window is None or window == "":
        window = "1h"
    if window not in WINDOWS:
        raise UnknownWindow(f"unknown window {window!r}: use one of {', '.join(WINDOWS)}")
    return WINDOWS[window]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_minutes(client: Any, pool: str, last_minute: int, count: int) -> list[dict[str, str]]:
    """The ``count`` minute hashes ending with ``last_minute`` (epoch minutes), oldest first,
    in one pipelined round trip; {} for a minute the ring no longer (or never) held."""
    if count > OBS_SLOTS:
        raise ValueError(f"at most {OBS_SLOTS} minutes are kept, asked for {count}")
    keys = Keys(check_namespace(pool))
    minutes = range(last_minute - count + 1, last_minute + 1)
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.obs, "m", "ab", "al")
        for minute in minutes:
            pipe.hgetall(keys.obs_minute(minute))
        state, *replies = pipe.execute()
    out = []
    for minute, raw in zip(minutes, replies, strict=True):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        out.append(fields if fields.get("m") == str(minute) else {})
    # The last minute's integrals since its last gauge sample (< 1 s) are still in the state.
    held = _text(state[0]) if state[0] is not None else None
    if held is not None and held.isdigit() and 0 <= last_minute - int(held) < count:
        fields = out[int(held) - last_minute - 1]
        if fields:
            for name, value in (("busy_ms", state[1]), ("live_ms", state[2])):
                extra = int(_text(value)) if value is not None else 0
                if extra:
                    fields[name] = str(_int(fields, name) + extra)
    return out


def _int(fields: dict[str, str], name: str) -> int:
    try:
        return int(fields.get(name) or 0)
    except ValueError:
        return 0


def _gauge(fields: dict[str, str], name: str) -> float | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _ratio(num: float, den: float, digits: int = 4) -> float | None:
    return round(num / den, digits) if den > 0 else None


def wait_quantile(counts: list[int], quantile: float = WAIT_QUANTILE) -> float | None:
    """The ``quantile`` of waits in seconds from non-cumulative bucket counts (bounds
    ``WAIT_BOUNDS`` then +Inf), linear within the bucket; None without claims. A quantile in
    the +Inf bucket is reported as the last finite bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = quantile * total
    running = 0
    lower = 0.0
    for bound, count in zip((*WAIT_BOUNDS, math.inf), counts, strict=True):
        if count and running + count >= rank:
            if math.isinf(bound):
                return WAIT_BOUNDS[-1]
            return round(lower + (bound - lower) * (rank - running) / count, 4)
        running += count
        lower = bound if not math.isinf(bound) else lower
    return WAIT_BOUNDS[-1]


def figures(fields: dict[str, int | float]) -> dict[str, Any]:
    """Derived figures of summed counters (one minute's, or a window's)."""
    warm, disk, download = (fields.get(f"hit:{k}", 0) for k in ("warm", "disk", "download"))
    routed = fields.get("routed", 0)
    return {
        "claims": fields.get("claims", 0),
        "throughput": fields.get("done", 0),
        "failed": fields.get("failed", 0),
        "wait_p95_seconds": wait_quantile([int(fields.get(f, 0)) for f in _WAIT_FIELDS]),
        "wait_mean_seconds": _ratio(fields.get("wait_ms", 0) / 1000, fields.get("claims", 0)),
        "run_mean_seconds": _ratio(fields.get("run_ms", 0) / 1000, fields.get("done", 0)),
        "queue_efficiency": _ratio(fields.get("wait_ms", 0), fields.get("run_ms", 0)),
        "utilization": _ratio(fields.get("busy_ms", 0), fields.get("live_ms", 0)),
        "busy_worker_seconds": round(fields.get("busy_ms", 0) / 1000, 3),
        "live_worker_seconds": round(fields.get("live_ms", 0) / 1000, 3),
        "hit_rate": _ratio(warm, warm + disk + download),
        "hits": {k: fields.get(f"hit:{k}", 0) for k in HIT_KINDS},
        "routed": routed,
        "routing_accuracy": _ratio(fields.get("route_time_ok", 0), routed),
        "routing_pool_accuracy": _ratio(fields.get("route_pool_ok", 0), routed),
    }


def _counts(fields: dict[str, str]) -> dict[str, int]:
    return {name: _int(fields, name) for name in (*COUNTERS, *_WAIT_FIELDS)}


def summarize(minutes: list[dict[str, str]]) -> dict[str, Any]:
    """Figures over several minute hashes, gauges as the last minute that has them."""
    total: dict[str, int] = {}
    for fields in minutes:
        for name, value in _counts(fields).items():
            total[name] = total.get(name, 0) + value
    out = figures(total)
    for name in GAUGES:
        out[_GAUGE_NAMES[name]] = next(
            (v for v in (_gauge(f, name) for f in reversed(minutes)) if v is not None), None)
    return out


_GAUGE_NAMES = {"depth": "queue_depth", "busy": "busy", "live": "live_workers",
                "desired": "desired"}


def read_desired(client: Any, pool: str) -> float | None:
    """The scaler's desired machines of the pool (``P.."desired"``); None when absent or
    not a number."""
    try:
        value = client.get(Keys(pool).desired)
    except Exception:  # a key of another type (WRONGTYPE): the scaler's, not ours to judge
        return None
    try:
        return float(_text(value)) if value is not None else None
    except ValueError:
        return None


def read_now(client: Any, pool: str, now_ms: int) -> dict[str, Any]:
    """The pool's gauges at this instant: pending and running jobs, live workers, desired."""
    keys = Keys(pool)
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.status_index("pending"))
        pipe.zcard(keys.status_index("assigned"))
        pipe.zcard(keys.status_index("in_progress"))
        pipe.zcount(keys.workers, now_ms, "+inf")
        pending, assigned, running, live = pipe.execute()
    return {"queue_depth": int(pending), "busy": int(assigned) + int(running),
            "live_workers": int(live), "desired": read_desired(client, pool)}


def pool_series(client: Any, pool: str, window: str | None = "1h",
                now_ms: int | None = None) -> dict[str, Any]:
    """One pool's per-minute series over ``window`` (``/api/pools/<name>/metrics``): parallel
    lists under ``series`` (``t``: each minute's start, ms), the window's ``totals`` and the
    gauges ``now``."""
    count = parse_window(window)
    now_ms = redis_now_ms(client) if now_ms is None else int(now_ms)  # the minutes' clock
    last = now_ms // 60000
    minutes = read_minutes(client, pool, last, count)
    per_minute = [figures(_counts(m)) | {_GAUGE_NAMES[g]: _gauge(m, g) for g in GAUGES}
                  for m in minutes]
    names = [k for k in per_minute[0] if k != "hits"]
    series: dict[str, Any] = {"t": [(last - count + 1 + i) * 60000 for i in range(count)]}
    for name in names:
        series[name] = [row[name] for row in per_minute]
    series["hits"] = {k: [row["hits"][k] for row in per_minute] for k in HIT_KINDS}
    return {
        "pool": pool, "window": window or "1h", "resolution_seconds": 60,
        "from_ms": series["t"][0], "to_ms": now_ms,
        "series": series, "totals": summarize(minutes), "now": read_now(client, pool, now_ms),
    }


def recent(client: Any, pools: list[str], now_ms: int | None = None,
           minutes: int = PROMETHEUS_MINUTES) -> dict[str, dict[str, Any]]:
    """Each pool's figures over the current minute and the ``minutes - 1`` before it
    (Prometheus gauges), with ``throughput_per_minute``: completions per minute of the time
    those minutes cover, ``minutes - 1`` whole ones and the current one so far (dividing by
    ``minutes`` read a steady rate 20% low at the start of every minute)."""
    now_ms = redis_now_ms(client) if now_ms is None else int(now_ms)  # the minutes' clock
    last = now_ms // 60000
    covered = max(minutes - 1 + (now_ms % 60000) / 60000, 1 / 60)
    out = {}
    for pool in pools:
        figures = summarize(read_minutes(client, pool, last, minutes))
        figures["throughput_per_minute"] = figures["throughput"] / covered
        out[pool] = figures
    return out
