"""Model residency in Redis: reports, events, bad input, and no keys left behind."""

from __future__ import annotations

import json
import time

import pytest
import redis

from capability_router.functions import QueueFunctions
from capability_router.keys import NAMESPACES_KEY, Keys
from capability_router.profile import WorkerProfile
from capability_router.registry import WORKERS_KEY, WorkerRegistry, worker_key
from capability_router.residency import (
    Placement,
    ResidencyReporter,
    clear_worker,
    read_residency,
    warm_workers,
)


def model_events(client: redis.Redis, namespace: str = "default") -> list[tuple[str, dict]]:
    entries = client.xrange(Keys(namespace).events)
    return [(f["event"], json.loads(f["data"])) for _, f in entries
            if f["event"] in ("model_loaded", "model_evicted")]


def residency_keys(client: redis.Redis) -> list[str]:
    return sorted(k for pattern in ("*models:*", "*warm:*", "*residents", "*busy")
                  for k in client.keys(pattern))


def test_loads_and_evictions_are_recorded_and_announced(client: redis.Redis) -> None:
    reporter = ResidencyReporter(client, "w1", ["default"], "psig1")
    reporter.report({"sdxl": "gpu", "flux": "disk",
                     "wan": Placement("remote", 12_000_000_000)})
    assert read_residency(client, "w1", "default") == {
        "sdxl": "gpu", "flux": "disk", "wan": "remote"}
    assert warm_workers(client, "sdxl", "default") == ["w1"]
    assert client.hget(Keys().model_sizes, "wan") == "12000000000"
    # flux loaded, sdxl pushed out to RAM, wan gone from the report
    changes = reporter.report({"sdxl": "ram", "flux": "gpu"})
    assert changes == {"sdxl": "ram", "wan": "", "flux": "gpu"}
    assert read_residency(client, "w1", "default") == {"sdxl": "ram", "flux": "gpu"}
    assert warm_workers(client, "sdxl", "default") == []
    assert warm_workers(client, "flux", "default") == ["w1"]
    assert [(e, d["model"], d["tier"], d["worker_id"]) for e, d in model_events(client)] == [
        ("model_loaded", "sdxl", "gpu", "w1"),
        ("model_evicted", "sdxl", "ram", "w1"),
        ("model_loaded", "flux", "gpu", "w1"),
    ]
    # nothing changed: nothing sent, no event
    assert reporter.report({"sdxl": "ram", "flux": "gpu"}) == {}
    assert len(model_events(client)) == 3


def test_a_worker_reports_into_every_pool_it_serves(client: redis.Redis) -> None:
    ResidencyReporter(client, "w1", ["fast", "heavy"]).report({"sdxl": "gpu"})
    for pool in ("fast", "heavy"):
        assert read_residency(client, "w1", pool) == {"sdxl": "gpu"}
        assert warm_workers(client, "sdxl", pool) == ["w1"]
        assert [e for e, _ in model_events(client, pool)] == ["model_loaded"]


def test_a_new_life_of_the_worker_replaces_what_the_old_one_left(client: redis.Redis) -> None:
    ResidencyReporter(client, "w1", ["default"]).report({"sdxl": "gpu", "flux": "gpu"})
    ResidencyReporter(client, "w1", ["default"]).report({"flux": "disk"})
    assert read_residency(client, "w1", "default") == {"flux": "disk"}
    assert warm_workers(client, "sdxl", "default") == []
    assert warm_workers(client, "flux", "default") == []


def test_bad_input_is_refused_and_changes_nothing(client: redis.Redis,
                                                  queue: QueueFunctions) -> None:
    ResidencyReporter(client, "w1", ["default"]).report({"sdxl": "gpu"})
    before = residency_keys(client), read_residency(client, "w1", "default")
    with pytest.raises(ValueError, match="unknown tier 'vram'"):
        ResidencyReporter(client, "w1", ["default"]).report({"flux": "gpu", "x": "vram"})
    for changes, mode, message in (
        ([("flux", "gpu", None), ("x", "vram", None)], "update", "unknown tier 'vram'"),
        ([("flux", "gpu", None)], "merge", "mode must be"),
        ([("", "gpu", None)], "update", "empty model name"),
    ):
        with pytest.raises(redis.ResponseError, match=message):
            queue.residency("w1", changes, mode)
    with pytest.raises(redis.ResponseError, match="not a number of bytes"):
        client.fcall("emp_residency", 1, Keys().config, "w1", 0, "", "update",
                     "flux", "remote", "big")
    with pytest.raises(redis.ResponseError, match="triples"):
        client.fcall("emp_residency", 1, Keys().config, "w1", 0, "", "update", "flux", "gpu")
    assert (residency_keys(client), read_residency(client, "w1", "default")) == before
    assert [e for e, _ in model_events(client)] == ["model_loaded"]


def test_a_worker_that_leaves_leaves_no_residency(client: redis.Redis) -> None:
    client.sadd(NAMESPACES_KEY, "fast", "heavy")
    registry = WorkerRegistry(client)
    profile = {"worker_id": "w1", "services": ["simulation"]}
    registry.heartbeat(profile, ["fast", "heavy"], [], ttl_ms=60_000, first=True)
    ResidencyReporter(client, "w1", ["fast", "heavy"]).report({"sdxl": "gpu", "flux": "disk"})
    ResidencyReporter(client, "w2", ["fast"]).report({"sdxl": "gpu"})
    registry.leave("w1")
    assert warm_workers(client, "sdxl", "fast") == ["w2"]
    assert residency_keys(client) == ["emp:{fast}:models:w2", "emp:{fast}:residents",
                                      "emp:{fast}:warm:sdxl"]
    assert ("model_evicted", "sdxl") in [(e, d["model"]) for e, d in
                                         model_events(client, "heavy")]


def test_a_dead_worker_found_by_the_registry_leaves_no_residency(client: redis.Redis) -> None:
    """Killed: its record expires; the registry's sweep of gone workers clears its models."""
    registry = WorkerRegistry(client)
    registry.heartbeat({"worker_id": "dead", "services": ["simulation"]}, ["default"], [],
                       ttl_ms=100, first=True)
    ResidencyReporter(client, "dead", ["default"]).report({"sdxl": "gpu"})
    time.sleep(0.3)
    assert not client.exists(worker_key("dead"))
    assert registry.workers() == []
    assert client.zcard(WORKERS_KEY) == 0
    assert residency_keys(client) == []


def test_clear_worker_empties_every_key(client: redis.Redis) -> None:
    ResidencyReporter(client, "w1", ["a", "b"]).report(
        {"sdxl": "gpu", "flux": "gpu", "wan": "disk"})
    clear_worker(client, "w1", ["a", "b"])
    assert residency_keys(client) == []


def test_the_sweep_of_unused_profiles_takes_their_workers_residency(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """A profile unseen past its retention is dropped; its worker's warm models with it."""
    profile = WorkerProfile.from_dict({"worker_id": "w1", "services": ["simulation"]})
    queue.configure(profile_retention_ms=1000)
    queue.register_worker(profile)
    client.zadd(queue.keys.prefix + "profile-seen", {profile.signature: 1})  # long unseen
    ResidencyReporter(client, "w1", ["default"], profile.signature).report({"sdxl": "gpu"})
    ResidencyReporter(client, "w2", ["default"], "other").report({"sdxl": "gpu"})
    queue.sweep()
    assert warm_workers(client, "sdxl", "default") == ["w2"]
    assert read_residency(client, "w1", "default") == {}
