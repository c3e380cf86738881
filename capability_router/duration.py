"""The duration model: how long a job will run, learnt online from completed jobs.

A job's *duration key* is (service, model set, which size features its
payload has); its *work units* are the product of those features, each
divided by the amount the job type declares as one unit
(``EmpTask.duration_features``, e.g. ``{"steps": 1, "width": 1024,
"height": 1024, "frames": 1}``: 30 steps of a 1024x1024 image are 30 units).
Run time is taken as proportional to work units within a key.

``emp_complete`` (``emp.lua``) learns each completed run atomically: an EWMA
of ln(seconds per unit) per key, in the namespace the job ran in
(``P.."durations"``). A prediction pools every namespace's estimate for the
key, weighted by runs, and falls back to the pools file's prior for the
service when no run of the key completed yet. There is no offline step.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from capability_router.errors import InvalidJob
from capability_router.keys import Keys
from capability_router.pools import Priors

#: Longest duration key kept as text; a longer model list is replaced by its digest.
MAX_KEY_LENGTH = 200

#: Work units of a job at most: sizes whose product overflows (``1e300`` steps of a
#: ``1e300``-pixel-wide image) are predicted as this, not as infinity.
MAX_WORK_UNITS = 1e12

#: Predicted seconds of a job at most (about 32 years): a large size times a large prior
#: (the file allows any finite one) would overflow the pool's integer load counter
#: (``P.."load"``, int64 ms: a job it could then not cancel or complete) or be infinity.
MAX_PREDICTED_SECONDS = 1_000_000_000

#: Seconds a learnt estimate read from Redis is reused (submit-path cost).
CACHE_SECONDS = 1.0

#: Cached keys at most; the cache is cleared when full.
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Size:
    """The size features a payload has (names, sorted) and their work units."""

    features: tuple[str, ...]
    work_units: float


def job_size(payload: Mapping[str, Any] | None, features: Mapping[str, float]) -> Size:
    """The job's size: declared features present in the payload as positive numbers.

    ``features`` maps a payload field to the amount of it that makes one
    unit. A field that is missing, zero or not a number is left out (it is
    then also not part of the key), so a job type may declare features that
    only some of its jobs have (``frames`` for video).
    """
    names, units = [], 1.0
    for name in sorted(features):
        value = _positive((payload or {}).get(name))
        if value is not None:
            names.append(name)
            units *= value / features[name]
    return Size(tuple(names), min(units, MAX_WORK_UNITS))


def check_size_fields(payload: Mapping[str, Any] | None, features: Mapping[str, float]) -> None:
    """Raise InvalidJob naming the first declared size field that is present but not a
    whole number of at least 0 (``-20``, ``2.5``, ``"many"``, ``true``).

    ``job_size`` leaves such a field out, as if absent: the job was filed and ran at
    its type's default size. Checked at submit so it is refused with nothing written.
    """
    for name in sorted(features):
        value = (payload or {}).get(name)
        if value is None:
            continue
        whole = (not isinstance(value, bool) and isinstance(value, (int, float))
                 and math.isfinite(value) and value >= 0 and float(value).is_integer())
        if not whole:
            raise InvalidJob(f"payload.{name} must be a whole number of at least 0, "
                             f"got {value!r}")


def _positive(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int):
        value = float(value) if value < 10**300 else math.inf  # float() of more overflows
    if isinstance(value, float) and math.isfinite(value) and value > 0:
        return value
    return None


def duration_key(service: str, models: Iterable[str], features: Iterable[str]) -> str:
    """``service|model+model|feature,feature`` ("-" for none); long model sets hashed."""
    model_part = "+".join(sorted(set(models))) or "-"
    key = f"{service}|{model_part}|{','.join(features) or '-'}"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(model_part.encode()).hexdigest()[:16]
        key = f"{service}|#{digest}|{','.join(features) or '-'}"
    return key


def parse_learnt(value: str | bytes | None) -> tuple[float, int] | None:
    """(mean ln seconds per unit, runs) of a ``durations`` hash value; None if unset/bad."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    mean, _, runs = text.partition(",")
    try:
        return float(mean), int(runs)
    except ValueError:
        return None


def pooled(estimates: Iterable[tuple[float, int] | None]) -> tuple[float, int] | None:
    """Namespaces' (mean, runs) of one key combined, weighted by runs."""
    total, weighted = 0, 0.0
    for estimate in estimates:
        if estimate and estimate[1] > 0:
            weighted += estimate[0] * estimate[1]
            total += estimate[1]
    return (weighted / total, total) if total else None


@dataclass(frozen=True)
class Estimate:
    """A predicted run time, and where it came from."""

    key: str
    work_units: float
    seconds: float
    #: "learned" (from ``runs`` completed jobs) or "prior" (the pools file).
    source: str
    runs: int = 0

    @property
    def predicted_ms(self) -> int:
        return max(1, round(self.seconds * 1000))

    def record_fields(self) -> dict[str, str]:
        """Job record fields: what ``emp_complete`` learns from, what queued work counts."""
        return {"duration_key": self.key, "work_units": f"{self.work_units:.6g}",
                "predicted_ms": str(self.predicted_ms)}


def predict(key: str, size: Size, learnt: tuple[float, int] | None,
            prior_seconds_per_unit: float) -> Estimate:
    """The estimate from what was learnt of ``key`` (pooled), else from the prior."""
    if learnt is not None:
        mean, runs = learnt
        return Estimate(key, size.work_units, _bounded(_exp(mean) * size.work_units),
                        "learned", runs)
    return Estimate(key, size.work_units, _bounded(prior_seconds_per_unit * size.work_units),
                    "prior")


def _exp(mean: float) -> float:
    """e**mean, infinity when that overflows a float."""
    try:
        return math.exp(mean)
    except OverflowError:
        return math.inf


def _bounded(seconds: float) -> float:
    """``seconds`` within MAX_PREDICTED_SECONDS (infinity and NaN become the cap)."""
    return seconds if seconds <= MAX_PREDICTED_SECONDS else float(MAX_PREDICTED_SECONDS)


class DurationModel:
    """Predicts run times from what ``emp_complete`` learnt in ``namespaces``."""

    def __init__(self, client: Any, namespaces: Iterable[str], priors: Priors,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self.client = client
        self.namespaces = list(namespaces)
        self.priors = priors
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, tuple[float, int] | None]] = {}

    def learnt(self, key: str) -> tuple[float, int] | None:
        """(mean ln seconds per unit, runs) over every namespace; None when never learnt."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self.client.pipeline(transaction=False) as pipe:
            for namespace in self.namespaces:
                pipe.hget(Keys(namespace).durations, key)
            values = pipe.execute()
        value = pooled(parse_learnt(v) for v in values)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (now + self.cache_seconds, value)
        return value

    def estimate(self, service: str, models: Iterable[str], payload: Mapping[str, Any] | None,
                 features: Mapping[str, float] | None = None) -> Estimate:
        """The predicted run time of one job."""
        size = job_size(payload, features or {})
        key = duration_key(service, models, size.features)
        return predict(key, size, self.learnt(key), self.priors.seconds_per_unit(service))
