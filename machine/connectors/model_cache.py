"""Which models a GPU holds, least recently used first, and what bringing one in costs.

A connector keeps one ``GpuModelCache``: models it has on disk, in RAM and
loaded in the card's memory, each of a size in GB. ``load`` makes a job's
models resident in the GPU, evicting the least recently used others (to RAM
while it has room, else back to disk) and returns the seconds that took by
tier: ``remote`` -> disk at the download bandwidth by size, disk -> GPU,
RAM -> GPU. ``residency`` is what the worker reports
(``capability_router.residency``). The simulation connector sleeps the
returned time; ComfyUI's connector only keeps the bookkeeping.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from capability_router.residency import Placement

GB = 1_000_000_000


@dataclass(frozen=True)
class LoadTimes:
    """Seconds to bring a model into the GPU from each tier.

    :param ram_seconds: RAM -> GPU.
    :param disk_seconds: disk -> GPU.
    :param download_mb_per_second: remote -> disk bandwidth (MB/s); then disk -> GPU.
    """

    ram_seconds: float = 0.5
    disk_seconds: float = 2.0
    download_mb_per_second: float = 500.0


class GpuModelCache:
    """LRU residency of one GPU (and its host RAM) over a set of known models.

    :param gpu_memory_gb: room for models in the card's memory.
    :param disk: models on disk. :param gpu: models loaded at start (also on disk).
    :param remote: models known but not downloaded.
    :param sizes_gb: size per model; others are ``default_size_gb``.
    :param ram_gb: host RAM that keeps evicted models (0: they go back to disk).
    """

    def __init__(self, gpu_memory_gb: float, disk: Iterable[str] = (),
                 gpu: Iterable[str] = (), remote: Iterable[str] = (),
                 sizes_gb: Mapping[str, float] | None = None, default_size_gb: float = 6.0,
                 ram_gb: float = 0.0, times: LoadTimes | None = None) -> None:
        if gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")
        self.gpu_memory_gb, self.ram_gb = float(gpu_memory_gb), float(ram_gb)
        self.sizes_gb = dict(sizes_gb or {})
        self.default_size_gb = float(default_size_gb)
        self.times = times or LoadTimes()
        self.remote = set(remote)
        self.disk = set(disk) | set(gpu)
        self.remote -= self.disk
        #: Least recently used first.
        self.gpu: OrderedDict[str, None] = OrderedDict()
        self.ram: OrderedDict[str, None] = OrderedDict()
        #: Models loaded into the GPU, and evicted from it, since start.
        self.loads = self.evictions = 0
        self.load(list(gpu))
        self.loads = 0

    def size_gb(self, model: str) -> float:
        return float(self.sizes_gb.get(model, self.default_size_gb))

    def tier(self, model: str) -> str:
        if model in self.gpu:
            return "gpu"
        if model in self.ram:
            return "ram"
        return "disk" if model in self.disk else "remote"

    def load_seconds(self, models: Iterable[str]) -> float:
        """What ``load`` would take now, changing nothing."""
        total = 0.0
        for model in dict.fromkeys(models):
            tier = self.tier(model)
            if tier == "remote":
                total += self.size_gb(model) * 1000 / self.times.download_mb_per_second
                tier = "disk"
            total += {"gpu": 0.0, "ram": self.times.ram_seconds,
                      "disk": self.times.disk_seconds}[tier]
        return total

    def knows(self, model: str) -> bool:
        """True when the model is anywhere here (GPU, RAM, disk, or downloadable)."""
        return model in self.gpu or model in self.ram or model in self.disk or model in self.remote

    def load(self, models: Iterable[str], evict_first: Iterable[str] = ()) -> float:
        """Make ``models`` resident in the GPU (most recently used); returns the seconds it took.

        Models bigger together than the card stay as loaded as fits, the
        newest last; a model never evicts another one of the same job. Room
        is made from ``evict_first`` (in that order) before the least
        recently used others (a placement directive says what is worth least).
        """
        wanted = list(dict.fromkeys(models))
        seconds = self.load_seconds(wanted)
        first = [m for m in dict.fromkeys(evict_first) if m not in wanted]
        for model in wanted:
            if model in self.gpu:
                self.gpu.move_to_end(model)
                continue
            self._make_room(self.size_gb(model), keep=set(wanted), first=first)
            self.ram.pop(model, None)
            self.remote.discard(model)
            self.disk.add(model)
            self.gpu[model] = None
            self.loads += 1
        return seconds

    def on_disk(self, models: Iterable[str]) -> None:
        """Note that ``models`` are on this machine's disk now (a real download put them
        there): their next load costs the disk tier, not another download."""
        for model in models:
            if self.tier(model) == "remote":
                self.remote.discard(model)
                self.disk.add(model)

    def touch(self, models: Iterable[str]) -> None:
        """Mark loaded models as just used (ComfyUI ran them)."""
        self.load(models)

    def _used(self, tier: Mapping[str, None]) -> float:
        return sum(self.size_gb(m) for m in tier)

    def evict(self, model: str) -> bool:
        """Take ``model`` out of the GPU (to RAM while it has room, else disk); False if absent."""
        if model not in self.gpu:
            return False
        self._evict(model)
        return True

    def _make_room(self, size: float, keep: set[str], first: Iterable[str] = ()) -> None:
        while self.gpu and self._used(self.gpu) + size > self.gpu_memory_gb:
            victim = next((m for m in (*first, *self.gpu) if m in self.gpu and m not in keep),
                          None)
            if victim is None:
                return
            self._evict(victim)

    def _evict(self, victim: str) -> None:
        del self.gpu[victim]
        self.evictions += 1
        if self.ram_gb > 0 and self.size_gb(victim) <= self.ram_gb:
            while self.ram and self._used(self.ram) + self.size_gb(victim) > self.ram_gb:
                self.ram.popitem(last=False)
            self.ram[victim] = None

    def residency(self) -> dict[str, Placement]:
        """Every known model's tier (remote ones with their size in bytes)."""
        out = {m: Placement("disk") for m in self.disk}
        out.update({m: Placement("remote", int(self.size_gb(m) * GB)) for m in self.remote})
        out.update({m: Placement("ram") for m in self.ram})
        out.update({m: Placement("gpu") for m in self.gpu})
        return out
