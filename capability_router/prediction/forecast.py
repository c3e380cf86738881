"""Demand per (pool, model): a time-of-day profile blended with the recent rate.

Arrivals of a studio follow the day (quiet nights, busy afternoons) with
bursts on top. The recent rate alone reacts late to the morning ramp and
overshoots after a burst; the daily profile alone misses bursts. The
forecast blends the two, leaning on the profile once it has seen that hour
of the day, and on the recent rate until then.

Everything is in seconds since the epoch (or virtual seconds in the
simulator): ``observe(t, key)`` for each arrival, ``rate(t, key)`` for the
expected arrivals per second at ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

#: Seconds in a day; the profile has ``PROFILE_SLOTS`` slots of a day.
DAY_SECONDS = 86_400
PROFILE_SLOTS = 24


@dataclass
class _Series:
    """One key's state: a decayed recent count and the per-slot profile."""

    #: Exponentially decayed arrival count, as of ``at``.
    recent: float = 0.0
    at: float = 0.0
    #: Slot -> learnt arrivals per second (EWMA over days); absent: not seen yet.
    profile: dict[int, float] = field(default_factory=dict)
    #: The slot being counted now, its start and its count so far.
    slot: int | None = None
    slot_start: float = 0.0
    slot_count: float = 0.0


@dataclass
class Forecaster:
    """Arrival-rate forecast per key (a pool, a model, or a (pool, model) pair).

    :param recent_seconds: time constant of the recent rate (a burst fades
        with it).
    :param profile_weight: share of the profile in the blend once the slot
        has been seen; the rest is the recent rate.
    :param profile_alpha: how fast a slot's profile follows new days.
    """

    recent_seconds: float = 600.0
    profile_weight: float = 0.5
    profile_alpha: float = 0.3
    _series: dict[Hashable, _Series] = field(default_factory=dict, repr=False)

    def observe(self, t: float, key: Hashable, count: float = 1.0) -> None:
        """Count ``count`` arrivals of ``key`` at time ``t`` (times never go back)."""
        series = self._series.setdefault(key, _Series(at=t))
        self._advance(series, t)
        series.recent += count
        series.slot_count += count

    def observe_many(self, t: float, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self.observe(t, key)

    def rate(self, t: float, key: Hashable) -> float:
        """Expected arrivals per second of ``key`` at ``t`` (0 for a key never seen)."""
        series = self._series.get(key)
        if series is None:
            return 0.0
        self._advance(series, t)
        recent = series.recent / self.recent_seconds
        learnt = series.profile.get(slot_of(t))
        if learnt is None:
            return recent
        return self.profile_weight * learnt + (1 - self.profile_weight) * recent

    def rate_ahead(self, t: float, key: Hashable, ahead_seconds: float) -> float:
        """Arrivals per second of ``key`` expected ``ahead_seconds`` after ``t``: the recent
        rate now, blended with the profile of that later slot once it has been seen
        (nothing moves past ``t``: times never go back)."""
        now = self.rate(t, key)
        series = self._series.get(key)
        if series is None or ahead_seconds <= 0:
            return now
        learnt = series.profile.get(slot_of(t + ahead_seconds))
        if learnt is None:
            return now
        recent = series.recent / self.recent_seconds
        return self.profile_weight * learnt + (1 - self.profile_weight) * recent

    def forget(self, key: Hashable) -> None:
        """Drop everything known of ``key`` (a cap on keys evicts the quietest)."""
        self._series.pop(key, None)

    def expected(self, t: float, key: Hashable, horizon_seconds: float) -> float:
        """Arrivals of ``key`` expected in ``[t, t + horizon_seconds)``."""
        return self.rate(t, key) * max(0.0, horizon_seconds)

    def keys(self) -> list[Hashable]:
        return list(self._series)

    def _advance(self, series: _Series, t: float) -> None:
        if t > series.at:
            series.recent *= math.exp(-(t - series.at) / self.recent_seconds)
            series.at = t
        slot = slot_of(t)
        slot_seconds = DAY_SECONDS / PROFILE_SLOTS
        if series.slot is None:
            series.slot, series.slot_start, series.slot_count = slot, t, 0.0
            return
        if slot == series.slot and t - series.slot_start < slot_seconds:
            return
        # The slot ended: fold its rate into the profile (a slot counted only in
        # part, like the first one, still gives a rate over the part seen).
        seen = min(slot_seconds, max(1.0, t - series.slot_start))
        observed = series.slot_count / seen
        before = series.profile.get(series.slot)
        series.profile[series.slot] = observed if before is None else (
            (1 - self.profile_alpha) * before + self.profile_alpha * observed)
        series.slot, series.slot_start, series.slot_count = slot, t, 0.0


def slot_of(t: float) -> int:
    """The time-of-day slot of ``t`` (UTC, or virtual time from a midnight at 0)."""
    return int((t % DAY_SECONDS) // (DAY_SECONDS / PROFILE_SLOTS))
