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

from capability_router.functions import redis_now_ms
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
from emp_tasks.directives import DirectiveFollower
from emp_tasks.producer import get_job, submit
from emp_tasks.residency_report import send_residency
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
    # The worker reports its residency, then files the directive's outcome: a loaded
    # machine read the residency between the two (no done event yet).
    wait_until(lambda: events(client, DONE_EVENT), timeout=10)
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
    wait_until(lambda: events(client, DONE_EVENT), timeout=10)  # filed after the residency
    assert events(client, DONE_EVENT)[0]["applied"] is True
    results = [job.get(timeout=60) for job in jobs]
    assert [r["cold"] for r in results] == [False] * 3
    assert {get_job(j.id, app=app)["worker_id"] for j in jobs} == {"w1"}


def _follower(client: redis.Redis, worker_id: str) -> DirectiveFollower:
    """A worker's directive follower in this process, on the simulation connector."""
    connector = make_connector("simulation", {
        "models": "sdxl,flux", "gpu_models": "sdxl", "gpu_memory_gb": 8,
        "model_size_gb": 6, "disk_load_seconds": 0.01})
    return DirectiveFollower(client, lambda: connector, worker_id, "sig", ["default"])


@pytest.mark.parametrize("skew", [180, -180], ids=["ahead", "behind"])
def test_a_worker_whose_host_clock_is_off_judges_expiry_on_redis_clock(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch, skew: int) -> None:
    """Tried: a directive that expired a second ago on Redis' clock, then one expiring in
    60 s, read by a worker whose host clock runs 3 min ahead, then 3 min behind. Before,
    expiry was judged on the host's clock: the worker ahead dropped the fresh preload as
    expired, the one behind acted on the stale evict. Now both act on the fresh one only,
    and stamp its ``placement_done`` on Redis' clock (within a second of its entry id)."""
    worker_id = f"clock-{'ahead' if skew > 0 else 'behind'}"
    follower = _follower(client, worker_id)
    now = redis_now_ms(client)
    publish(client, Directive(EVICT, "sdxl", "default", worker_id, "stale", expires_ms=now - 1000))
    publish(client, Directive(PRELOAD, "flux", "default", worker_id, "fresh",
                              expires_ms=now + 60_000))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    follower.step(block_ms=100)
    assert [(d.reason, outcome.applied) for d, outcome in follower.done] == [("fresh", True)]
    [(done_id, done)] = [(i, json.loads(f["data"])) for i, f in
                         client.xrange(Keys("default").events) if f["event"] == DONE_EVENT]
    assert done["model"] == "flux" and abs(done["timestamp"] - int(done_id.split("-")[0])) < 1000


@pytest.mark.parametrize("skew", [180, -180], ids=["ahead", "behind"])
def test_a_directive_from_a_leader_whose_host_clock_is_off_is_followed(
        app, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, skew: int) -> None:
    """Tried: flux arrivals, an idle worker with flux on disk, a leader tick on a host 3 min
    ahead (then behind), and the worker, on a host whose clock is right, reading what the
    tick published. Before, the leader ahead issued nothing (its clock put the worker's
    heartbeat, on Redis' clock, out of date) and the one behind issued a preload already
    expired 2 min on the worker's clock, which it dropped: flux stayed cold. Now the
    worker loads flux."""
    worker_id = f"led-{'ahead' if skew > 0 else 'behind'}"
    follower = _follower(client, worker_id)
    send_residency(client, worker_id, ["default"], "sig",
                   follower.connector().residency())  # sdxl in the GPU, flux on disk
    client.zadd(Keys("default").idle, {f"sig:{worker_id}": redis_now_ms(client) + 60_000})
    for _ in range(3):
        submit("simulation", {"steps": 1}, requirements={"models": ["flux"]}, app=app,
               countdown=3600)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    IntelligenceService(client, None, IntelligenceSettings(instance="t")).step()
    monkeypatch.setattr(time, "time", real)
    follower.step(block_ms=100)
    assert [(d.action, d.model, o.applied) for d, o in follower.done] == [(PRELOAD, "flux", True)]
    assert warm_workers(client, "flux", "default") == [worker_id]
