"""Placement directives reach a real worker's simulation connector and change its residency.

Workers are real ``emp worker`` processes with the simulation connector
(``sdxl`` loaded in an 8 GB card, ``flux`` on disk, 6 GB each: one fits).
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from machine_helpers import wait_until

from capability_router.keys import Keys
from capability_router.prediction.directives import (
    ANY_WORKER,
    DIRECTIVE_EVENT,
    DONE_EVENT,
    EVICT,
    PRELOAD,
    Directive,
    publish,
)
from capability_router.prediction.service import IntelligenceService, IntelligenceSettings
from capability_router.residency import read_residency, warm_workers
from emp_tasks.producer import get_job, submit
from machine.connectors import JobInput, make_connector

SIM = {"EMP_CONNECTOR": "simulation", "EMP_SIMULATION_MODELS": "sdxl,flux",
       "EMP_SIMULATION_GPU_MODELS": "sdxl", "EMP_SIMULATION_GPU_MEMORY_GB": "8",
       "EMP_SIMULATION_MODEL_SIZE_GB": "6", "EMP_SIMULATION_DISK_LOAD_SECONDS": "0.3",
       "EMP_HEALTH_GATE": "off"}


def events(client: redis.Redis, name: str, pool: str = "default") -> list[dict]:
    return [json.loads(f["data"]) for _, f in client.xrange(Keys(pool).events)
            if f["event"] == name]


def test_the_simulation_connector_preloads_evicts_and_declines() -> None:
    connector = make_connector("simulation", {
        "models": "sdxl,flux,wan", "gpu_models": "sdxl,wan", "gpu_memory_gb": 12,
        "model_size_gb": 6, "disk_load_seconds": 0.05})
    # Room is made from the model the directive names first (wan), not the LRU one (sdxl).
    loaded = connector.apply_directive(Directive(PRELOAD, "flux", "default",
                                                 make_room_from=("wan",)))
    assert loaded.applied and loaded.seconds == pytest.approx(0.05)
    assert {m: p.tier for m, p in connector.residency().items()} == {
        "sdxl": "gpu", "flux": "gpu", "wan": "disk"}
    assert connector.apply_directive(Directive(EVICT, "sdxl", "default")).applied
    assert connector.residency()["sdxl"].tier == "disk"
    missing = connector.apply_directive(Directive(PRELOAD, "nope", "default"))
    assert not missing.applied and "not available here" in missing.detail
    assert not connector.apply_directive(Directive(EVICT, "sdxl", "default")).applied
    # A job after the preload finds flux warm.
    warm = connector.run_job(JobInput("j", "simulation", {"steps": 1, "duration": 0.01},
                                      requirements={"models": ["flux"]}), lambda r: None)
    assert not warm.data["cold"]


@pytest.mark.timeout(90)
def test_a_directive_reaches_the_worker_and_changes_its_residency(
        app, client: redis.Redis, start_worker) -> None:
    start_worker("w1", **SIM)
    assert warm_workers(client, "sdxl", "default") == ["w1"]
    publish(client, Directive(PRELOAD, "flux", "default", "w2", "for another worker"))
    directive_id = publish(client, Directive(
        PRELOAD, "flux", "default", "w1", "test: flux expected", make_room_from=("sdxl",),
        expires_ms=int(time.time() * 1000) + 60_000))
    wait_until(lambda: warm_workers(client, "flux", "default") == ["w1"], timeout=30)
    assert read_residency(client, "w1", "default") == {"flux": "gpu", "sdxl": "disk"}
    assert warm_workers(client, "sdxl", "default") == []
    [done] = events(client, DONE_EVENT)
    assert done["directive_id"] == directive_id and done["applied"] is True
    assert done["worker_id"] == "w1" and done["residency_changes"] == {
        "sdxl": "disk", "flux": "gpu"}
    assert [e["reason"] for e in events(client, DIRECTIVE_EVENT)] == [
        "for another worker", "test: flux expected"]
    # A job for flux now runs warm on it; an expired directive is ignored.
    result = submit("simulation", {"steps": 1, "duration": 0.05},
                    requirements={"models": ["flux"]}, app=app).get(timeout=30)
    assert result["cold"] is False
    publish(client, Directive(EVICT, "flux", "default", "w1", expires_ms=1))
    publish(client, Directive(EVICT, "flux", "default", ANY_WORKER, "any idle worker"))
    wait_until(lambda: len(events(client, DONE_EVENT)) == 2, timeout=30)
    assert warm_workers(client, "flux", "default") == []
    assert [e["any_worker"] for e in events(client, DONE_EVENT)] == [False, True]


@pytest.mark.timeout(120)
def test_the_leader_preloads_a_forecast_model_on_an_idle_worker(
        app, client: redis.Redis, start_worker) -> None:
    """End to end: arrivals of flux jobs (delayed, so not yet claimed) -> the leader's
    directive -> the idle worker loads flux -> warm, before any flux job runs."""
    start_worker("w1", **SIM)
    jobs = [submit("simulation", {"steps": 1, "duration": 0.05},
                   requirements={"models": ["flux"]}, app=app, countdown=4) for _ in range(3)]
    service = IntelligenceService(client, None, IntelligenceSettings(instance="test"))
    assert service.step() and service.stats["directives"] == 1
    wait_until(lambda: warm_workers(client, "flux", "default") == ["w1"], timeout=30)
    [directive] = events(client, DIRECTIVE_EVENT)
    assert directive["worker"] == "w1" and directive["make_room_from"] == ["sdxl"]
    assert events(client, DONE_EVENT)[0]["applied"] is True
    results = [job.get(timeout=60) for job in jobs]
    assert [r["cold"] for r in results] == [False] * 3
    assert {get_job(j.id, app=app)["worker_id"] for j in jobs} == {"w1"}
