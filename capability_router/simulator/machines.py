"""Virtual machines: hardware per pool, model caches in tiers, load and download times.

A machine runs one worker (one GPU, or one CPU box for the fast pool). Its
models sit in tiers, warmest first: ``gpu`` (loaded, runs now), ``ram``,
``disk``, ``remote`` (anything not on the machine: downloaded first). Each
tier is an LRU of bounded GB; a model leaving the GPU drops to RAM, one
leaving RAM stays on disk, one leaving the disk is gone. Loading a model into
the GPU takes its size over the bandwidth of the tier it comes from (a remote
one: the download, then the disk load). The worker reports every tier change
through ``emp_residency`` (the engine does), which is what warm-first claims
and the router read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from capability_router.pools import Pool

#: Bandwidths, GB per second: RAM -> GPU, disk -> GPU, download to disk.
RAM_GBPS = 4.0
DISK_GBPS = 1.0
DOWNLOAD_GBPS = 0.25


@dataclass(frozen=True)
class Hardware:
    """A machine type: GPU (or CPU) memory for loaded models, RAM and disk caches."""

    name: str
    gpu: bool
    #: GPU memory advertised in the worker profile (0: none).
    gpu_memory_gb: float
    #: Memory for loaded models (VRAM; RAM on a CPU machine), GB.
    loaded_gb: float
    ram_gb: float
    disk_gb: float
    services: tuple[str, ...]


def hardware_for(pool: Pool, services: list[str]) -> Hardware:
    """The machine type of a pool: its largest GPU (32 GB of RAM for loaded models on a
    CPU-only pool), RAM about 2.5x the GPU, its disk budget, the services it runs."""
    vram = pool.gpu_memory_gb[1] if pool.gpu else 0.0
    return Hardware(pool.name, pool.gpu, vram, vram if pool.gpu else 32.0,
                    min(128.0, 2.5 * vram), pool.storage_gb,
                    tuple(s for s in services if pool.runs_service(s)))


@dataclass
class Load:
    """What getting a job's models into the GPU takes."""

    ms: int
    #: Models downloaded (were remote), and their GB.
    downloads: int = 0
    download_gb: float = 0.0
    #: True when every model was already in the GPU.
    warm: bool = True
    #: Residency changes to report: (model, tier or "" when gone).
    changes: list[tuple[str, str]] = field(default_factory=list)


class ModelCache:
    """A machine's models in tiers (module docstring)."""

    def __init__(self, hardware: Hardware, sizes: dict[str, float]) -> None:
        self.hardware = hardware
        self.sizes = sizes
        self.tiers: dict[str, OrderedDict[str, float]] = {
            "gpu": OrderedDict(), "ram": OrderedDict(), "disk": OrderedDict()}
        self.capacity = {"gpu": hardware.loaded_gb, "ram": hardware.ram_gb,
                         "disk": hardware.disk_gb}

    def tier_of(self, model: str) -> str:
        for tier in ("gpu", "ram", "disk"):
            if model in self.tiers[tier]:
                return tier
        return "remote"

    def residency(self) -> dict[str, str]:
        """Model -> its warmest tier."""
        out: dict[str, str] = {}
        for tier in ("disk", "ram", "gpu"):
            for model in self.tiers[tier]:
                out[model] = tier
        return out

    def used(self, tier: str) -> float:
        return sum(self.tiers[tier].values())

    def load(self, models: list[str], pinned: tuple[str, ...] = ()) -> Load:
        """Bring ``models`` into the GPU (LRU evictions below), returning the cost."""
        result = Load(0)
        seconds = 0.0
        keep = set(models) | set(pinned)
        for model in models:
            size = self.sizes.get(model, 5.0)
            tier = self.tier_of(model)
            if tier == "gpu":
                self.tiers["gpu"].move_to_end(model)
                continue
            result.warm = False
            if tier == "remote":
                seconds += size / DOWNLOAD_GBPS + size / DISK_GBPS
                result.downloads += 1
                result.download_gb += size
                self._put("disk", model, size, keep, result)
            elif tier == "disk":
                seconds += size / DISK_GBPS
                self.tiers["disk"].move_to_end(model)
            else:
                seconds += size / RAM_GBPS
                self.tiers["ram"].pop(model)
            self._put("gpu", model, size, keep, result)
            result.changes.append((model, "gpu"))
        result.ms = round(seconds * 1000)
        return result

    def _put(self, tier: str, model: str, size: float, keep: set[str], result: Load) -> None:
        cache = self.tiers[tier]
        cache[model] = size
        while sum(cache.values()) > self.capacity[tier] and len(cache) > 1:
            victim = next((m for m in cache if m not in keep), None)
            if victim is None:
                break
            victim_size = cache.pop(victim)
            if tier == "gpu":
                if self.capacity["ram"] > 0:
                    self._put("ram", victim, victim_size, keep, result)
                    result.changes.append((victim, "ram"))
                else:
                    result.changes.append((victim, self.tier_of(victim)))
            elif tier == "ram":
                result.changes.append((victim, self.tier_of(victim)))
            else:  # leaves the disk: gone unless still loaded above
                if self.tier_of(victim) == "remote":
                    result.changes.append((victim, ""))
