"""Model residency: where a worker holds each model, reported into every pool it serves.

A worker's models are each in one tier: ``gpu`` (loaded in VRAM, warm),
``ram``, ``disk`` or ``remote`` (downloadable; its size says how long that
takes). Claims read residency inside their own pool's hash slot, so a
worker reports into every pool (namespace) it serves. Reports send only
what changed since the last one (each change is O(1) in Redis,
``emp_residency``); the first report of a process replaces whatever an
earlier life of the worker left. ``clear_worker`` drops a worker's
residency when it leaves or is found dead (``WorkerRegistry``).

Keys (per namespace, see ``capability_router.keys``): ``models:<worker>``
(model -> tier), ``warm:<model>`` (worker -> ms of the report), ``residents``
(worker -> profile signature), ``model-size`` (model -> bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from capability_router.functions import QueueFunctions
from capability_router.keys import Keys

#: Tiers, warmest first.
TIERS = ("gpu", "ram", "disk", "remote")


@dataclass(frozen=True)
class Placement:
    """Where one model is on one worker; ``size_bytes`` when known (remote models)."""

    tier: str
    size_bytes: int | None = None


def placements(residency: Mapping[str, str | Placement]) -> dict[str, Placement]:
    """Normalize ``{model: tier or Placement}``; ValueError names a bad tier or model."""
    out: dict[str, Placement] = {}
    for model, where in residency.items():
        place = where if isinstance(where, Placement) else Placement(str(where))
        if not isinstance(model, str) or not model:
            raise ValueError(f"model names must be non-empty strings, got {model!r}")
        if place.tier not in TIERS:
            raise ValueError(f"unknown tier {place.tier!r} of model {model!r} "
                             f"(one of {', '.join(TIERS)})")
        out[model] = place
    return out


class ResidencyReporter:
    """Reports one worker's residency into the pools it serves, sending only changes.

    :param client: a redis-py client.
    :param worker_id: the worker.
    :param pools: namespaces the worker consumes.
    :param profile_signature: its profile signature (lets a submit wake it when warm).
    """

    def __init__(self, client: Any, worker_id: str, pools: Iterable[str],
                 profile_signature: str = "") -> None:
        self.worker_id = worker_id
        self.profile_signature = profile_signature
        self.functions = [QueueFunctions(client, pool) for pool in dict.fromkeys(pools)]
        self.reported: dict[str, Placement] | None = None

    def report(self, residency: Mapping[str, str | Placement]) -> dict[str, str]:
        """Send what changed since the last report; returns ``{model: new tier or ""}``."""
        now = placements(residency)
        if self.reported is None:
            changes = [(m, p.tier, p.size_bytes) for m, p in now.items()]
            mode = "replace"
        else:
            changes = [(m, p.tier, p.size_bytes) for m, p in now.items()
                       if self.reported.get(m) != p]
            changes += [(m, "", None) for m in self.reported if m not in now]
            mode = "update"
        changes.sort(key=lambda change: change[1] == "gpu")  # evictions before loads
        if changes or mode == "replace":
            for functions in self.functions:
                functions.residency(self.worker_id, changes, mode, self.profile_signature)
        self.reported = now
        return {model: tier for model, tier, _ in changes}

    def clear(self) -> None:
        """Drop this worker's residency in its pools (it stops)."""
        for functions in self.functions:
            functions.residency(self.worker_id, mode="clear")
        self.reported = None


def clear_worker(client: Any, worker_id: str, namespaces: Iterable[str]) -> None:
    """Drop a worker's residency in ``namespaces`` (it left, or its record expired)."""
    for namespace in namespaces:
        QueueFunctions(client, namespace).residency(worker_id, mode="clear")


def read_residency(client: Any, worker_id: str, namespace: str) -> dict[str, str]:
    """A worker's residency in a pool: ``{model: tier}``."""
    return dict(client.hgetall(Keys(namespace).models(worker_id)))


def warm_workers(client: Any, model: str, namespace: str) -> list[str]:
    """Workers that hold ``model`` in the GPU in a pool, latest report first."""
    return list(client.zrange(Keys(namespace).warm(model), 0, -1, desc=True))
