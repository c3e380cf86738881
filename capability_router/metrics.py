"""Queue histograms kept in Redis: bucket bounds, field names, reading, buffering.

Each namespace keeps its histograms in one hash, ``P.."metrics"``, as
non-cumulative bucket counters ``<name>:<le>`` plus a sum in integer units
(``wait:sum_ms``, ``claim:sum_us``): one HINCRBY per observation for its
bucket and one for the sum (the count is the buckets' total), and counters
only ever grow, which is what a Prometheus histogram needs. ``le`` is the
bucket's upper bound in seconds.

* ``wait``: how long a claimed job waited to be claimed, counted by
  ``emp_claim`` inside Redis (its bounds are repeated in ``lua/emp.lua``; a
  test checks they agree).
* ``claim``: a worker's claim round trip for claims that returned a job,
  measured by the transport, buffered in memory (``HistogramBuffer``) and
  flushed with the lease renewals.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import redis

from capability_router.keys import Keys

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the job wait buckets; +Inf is implicit.
WAIT_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
)
#: Upper bounds (seconds) of the claim round-trip buckets; +Inf is implicit.
CLAIM_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

WAIT = "wait"
CLAIM = "claim"
#: Histogram name -> (bounds, sum field, seconds per unit of the sum field).
HISTOGRAMS: dict[str, tuple[tuple[float, ...], str, float]] = {
    WAIT: (WAIT_BOUNDS, "sum_ms", 1e-3),
    CLAIM: (CLAIM_BOUNDS, "sum_us", 1e-6),
}


def metrics_key(namespace: str) -> str:
    """The namespace's metrics hash (``P.."metrics"``, same hash tag as its queue)."""
    return Keys(namespace).prefix + "metrics"


def le_text(bound: float) -> str:
    """A bound as the field spells it: ``0.005``, ``1``, ``2.5``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def bucket_field(name: str, seconds: float) -> str:
    """The field counting ``seconds`` in histogram ``name``: the smallest bound >= it."""
    for bound in HISTOGRAMS[name][0]:
        if seconds <= bound:
            return f"{name}:{le_text(bound)}"
    return f"{name}:+Inf"


def sum_field(name: str) -> str:
    return f"{name}:{HISTOGRAMS[name][1]}"


@dataclass
class Histogram:
    """A histogram as Prometheus wants it.

    ``buckets`` are cumulative ``(upper bound seconds, count)`` pairs ending
    with ``(inf, count)``; ``sum`` is in seconds.
    """

    buckets: list[tuple[float, int]]
    count: int
    sum: float


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def histogram_from_fields(name: str, fields: dict[str, Any]) -> Histogram:
    """Build histogram ``name`` from a metrics hash (as HGETALL returns it)."""
    bounds, _, unit = HISTOGRAMS[name]
    raw = {_text(k): int(v) for k, v in fields.items()}
    buckets: list[tuple[float, int]] = []
    running = 0
    for bound in (*bounds, math.inf):
        running += raw.get(f"{name}:{le_text(bound)}", 0)
        buckets.append((bound, running))
    # The count is the +Inf bucket, so the histogram is consistent by
    # construction even if a reader raced a non-atomic writer.
    return Histogram(buckets, running, raw.get(sum_field(name), 0) * unit)


def read_histograms(client: redis.Redis, namespace: str) -> dict[str, Histogram]:
    """Every histogram of a namespace, by name (``wait``, ``claim``); empty ones too."""
    return histograms_from_hash(client.hgetall(metrics_key(namespace)))


def histograms_from_hash(fields: dict[str, Any]) -> dict[str, Histogram]:
    """Every histogram from a metrics hash already read (e.g. in a pipeline)."""
    return {name: histogram_from_fields(name, fields) for name in HISTOGRAMS}


class HistogramBuffer:
    """Observations kept in memory per namespace until flushed to Redis.

    Workers observe on the hot path (a dict increment) and write the batch
    with the lease renewals, so metrics add no Redis call per claim.
    """

    def __init__(self, name: str = CLAIM) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, int]] = {}

    def observe(self, namespace: str, seconds: float) -> None:
        """Count one observation of ``seconds`` for ``namespace``."""
        field = bucket_field(self.name, seconds)
        unit = HISTOGRAMS[self.name][2]
        with self._lock:
            counts = self._pending.setdefault(namespace, {})
            counts[field] = counts.get(field, 0) + 1
            total = sum_field(self.name)
            counts[total] = counts.get(total, 0) + max(0, round(seconds / unit))

    def drain(self) -> dict[str, dict[str, int]]:
        """Take every buffered increment (namespace -> field -> amount)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def flush(self, client: redis.Redis) -> int:
        """Write the buffered increments in one pipeline; returns the fields written.

        A failed flush drops that batch only (logged): counters are for
        watching, and a retry could double-count a batch that half-arrived.
        """
        pending = self.drain()
        if not pending:
            return 0
        written = 0
        try:
            # No MULTI: namespaces live in different cluster slots, and a
            # reader takes the count from the buckets, so a half-read batch
            # still gives a consistent histogram.
            with client.pipeline(transaction=False) as pipe:
                for namespace, counts in pending.items():
                    key = metrics_key(namespace)
                    for field, amount in counts.items():
                        pipe.hincrby(key, field, amount)
                        written += 1
                pipe.execute()
        except Exception:  # never let metrics break the caller (the worker's renewals)
            logger.debug("could not flush %s metrics; batch dropped", self.name, exc_info=True)
            return 0
        return written

