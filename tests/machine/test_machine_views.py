"""Readiness from supervisor's states and the worker registry (a real Redis)."""

from __future__ import annotations

import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from capability_router.registry import WorkerRegistry
from machine.gpus import Gpu, GpuInventory
from machine.plan import build_plan
from machine.views import not_ready, program_views

PLAN = build_plan("box", "simulation:2", GpuInventory("mock", [Gpu(0, "Mock", 24)]))


def info(name: str, state: str = "RUNNING", started: float | None = None) -> dict:
    return {"name": name, "statename": state, "pid": 100, "start": int(started or time.time()),
            "exitstatus": 0, "spawnerr": ""}


def register(client: redis.Redis, worker_id: str) -> None:
    WorkerRegistry(client).heartbeat({"worker_id": worker_id, "machine_id": "box",
                                      "services": ["simulation"]}, ["default"], ["job-1"],
                                     60_000, first=True)


def test_ready_needs_running_programs_registered_by_their_current_process(
        client: redis.Redis) -> None:
    infos = {"simulation-0": info("simulation-0"), "simulation-1": info("simulation-1")}
    assert [w["reason"] for w in not_ready(program_views(PLAN, infos, client))] == [
        "worker has not registered in Redis yet"] * 2
    register(client, "box-simulation-0")
    register(client, "box-simulation-1")
    views = program_views(PLAN, infos, client)
    assert not_ready(views) == []
    assert views[0]["jobs"] == ["job-1"] and views[0]["profile"]["worker_id"] == \
        "box-simulation-0"
    # simulation-1 was restarted after its record was written: the record is its old process's.
    infos["simulation-1"] = info("simulation-1", started=time.time() + 5)
    infos["simulation-0"] = info("simulation-0", state="BACKOFF")
    views = program_views(PLAN, infos, client)
    reasons = {w["name"]: w["reason"] for w in not_ready(views)}
    assert reasons == {"simulation-0": "worker is BACKOFF",
                       "simulation-1": "worker has not registered in Redis yet"}


def test_status_shows_no_jobs_for_a_worker_whose_process_holds_none(client: redis.Redis) -> None:
    """Tried: /status after a worker was SIGKILLed (supervisor restarting it) and while
    one crash-looped (BACKOFF, no process): each was listed as registered and ``busy``
    or with the job its dead process had held, though that job was on its way back to
    pending. A worker counts as registered, with jobs, only while its process runs."""
    started = time.time() - 5
    register(client, "box-simulation-0")
    register(client, "box-simulation-1")
    infos = {"simulation-0": info("simulation-0", state="BACKOFF", started=started),
             "simulation-1": info("simulation-1", started=time.time() + 5)}
    for view in program_views(PLAN, infos, client):
        assert (view["registered"], view["jobs"], view["status"]) == (False, [], None), view


def test_a_missing_program_is_unknown_and_redis_errors_are_shown() -> None:
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    views = program_views(PLAN, {}, unreachable)
    assert {v["state"] for v in views} == {"UNKNOWN"}
    assert all("registry_error" in v for v in views)


def test_ready_says_redis_is_unreachable_not_that_a_worker_never_registered() -> None:
    """Tried: /ready while Redis is down, every program RUNNING: each worker was said to
    have "not registered in Redis yet", though it had; Redis could not be read."""
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    infos = {spec.name: {"statename": "RUNNING", "pid": 10, "start": 1} for spec in PLAN.programs}
    reasons = [w["reason"] for w in not_ready(program_views(PLAN, infos, unreachable))]
    assert reasons and all(r.startswith("Redis unreachable") for r in reasons), reasons
