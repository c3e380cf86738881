"""Model residency of the simulation connector: LRU in the card's memory, load time by tier."""

from __future__ import annotations

import pytest

from capability_router.residency import Placement
from machine.connectors import ConnectorError, ErrorType, JobInput, make_connector
from machine.connectors.model_cache import GpuModelCache, LoadTimes


def tiers(cache_or_connector: object) -> dict[str, str]:
    return {m: p.tier for m, p in cache_or_connector.residency().items()}


def test_the_least_recently_used_model_leaves_the_gpu() -> None:
    cache = GpuModelCache(12, disk=["a", "b", "c"], default_size_gb=6)
    cache.load(["a"])
    cache.load(["b"])
    cache.load(["a"])  # a used again: b is now the least recent
    cache.load(["c"])
    assert tiers(cache) == {"a": "gpu", "b": "disk", "c": "gpu"}
    assert (cache.loads, cache.evictions) == (3, 1)


def test_evicted_models_wait_in_ram_while_it_has_room() -> None:
    times = LoadTimes(ram_seconds=0.5, disk_seconds=3, download_mb_per_second=1000)
    cache = GpuModelCache(6, disk=["a", "b", "c"], default_size_gb=6, ram_gb=6, times=times)
    cache.load(["a"])
    cache.load(["b"])
    assert tiers(cache) == {"a": "ram", "b": "gpu", "c": "disk"}
    assert cache.load_seconds(["a"]) == 0.5 and cache.load_seconds(["c"]) == 3
    cache.load(["c"])  # b to RAM pushes a out of it
    assert tiers(cache) == {"a": "disk", "b": "ram", "c": "gpu"}


def test_a_remote_model_downloads_by_size_and_bandwidth_then_loads() -> None:
    times = LoadTimes(ram_seconds=0.5, disk_seconds=1, download_mb_per_second=1000)
    cache = GpuModelCache(24, remote=["wan"], sizes_gb={"wan": 4}, times=times)
    assert cache.residency() == {"wan": Placement("remote", 4_000_000_000)}
    assert cache.load(["wan"]) == pytest.approx(4 + 1)
    assert tiers(cache) == {"wan": "gpu"} and cache.load(["wan"]) == 0


def test_models_of_one_job_never_evict_each_other() -> None:
    cache = GpuModelCache(10, disk=["a", "b"], default_size_gb=6)
    cache.load(["a", "b"])
    assert tiers(cache) == {"a": "gpu", "b": "gpu"}


def test_the_simulation_adds_the_cold_start_to_the_run() -> None:
    connector = make_connector("simulation", {
        "models": "sdxl,flux", "gpu_models": "flux", "disk_load_seconds": 0.3,
        "gpu_memory_gb": 8, "model_size_gb": 6, "steps": 1, "duration_seconds": 0.01})
    assert tiers(connector) == {"sdxl": "disk", "flux": "gpu"}
    job = JobInput("j1", "simulation", {}, requirements={"models": ["sdxl"]})
    cold = connector.run_job(job, lambda report: None)
    assert cold.data["cold"] and cold.data["load_seconds"] == 0.3
    assert cold.processing_time_ms >= 300
    assert tiers(connector) == {"sdxl": "gpu", "flux": "disk"}
    warm = connector.run_job(JobInput("j2", "simulation", {"models": "sdxl"}), lambda r: None)
    assert not warm.data["cold"] and warm.processing_time_ms < 300


def test_a_bad_model_size_is_refused() -> None:
    with pytest.raises(ConnectorError) as caught:
        make_connector("simulation", {"model_sizes": "sdxl:big"})
    assert caught.value.error_type == ErrorType.VALIDATION and "sdxl:big" in str(caught.value)
    with pytest.raises(ValueError, match="gpu_memory_gb"):
        make_connector("simulation", {"gpu_memory_gb": 0})
