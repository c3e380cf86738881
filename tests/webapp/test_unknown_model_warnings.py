"""A submit requiring a model no catalog entry and no live worker of its pool has is warned
of, by the one rule of every way in (``pool_view.unserved_warnings``)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import redis
from rest_helpers import Api

from capability_router.catalog import ModelEntry, put_model
from capability_router.functions import QueueFunctions
from capability_router.keys import Keys
from capability_router.pool_view import unserved_warnings
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from capability_router.residency import ResidencyReporter
from conftest import ROOT

EMP = [sys.executable, "-m", "emp_tasks.cli"]
WAITS = ("the job waits until a worker with that model starts or the model is added to "
         "the catalog")


def unknown(model: str, pool: str = "default") -> str:
    return (f"model {model} is not in the model catalog and no live worker of pool {pool} "
            f"has it: {WAITS} (/api/models)")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMP, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def live_with(client: redis.Redis, pool: str, worker_id: str, models: dict[str, str]) -> None:
    """A live worker of ``pool`` (a heartbeat) reporting ``models`` ({name: tier})."""
    WorkerRegistry(client).heartbeat({"worker_id": worker_id, "services": ["simulation"]},
                                     [pool], [], 60_000)
    ResidencyReporter(client, worker_id, [pool]).report(models)


def catalogued(client: redis.Redis, name: str) -> None:
    put_model(client, ModelEntry(name, f"https://models.example/{name}", 10, "0" * 64))


def test_rest_201_warns_of_a_model_nobody_has_and_not_of_a_known_one(
        client: redis.Redis, start_server: Any) -> None:
    """Tried: POST /api/jobs {"service_required": "simulation", "requirements": {"models":
    ["no-such-model"]}} with no catalog entry and no worker reporting it. Before, the 201
    was {success, job_id, ...} with no warnings, and the job stayed pending for ever with
    nothing saying why. Now its ``warnings`` name the model and what the job waits for;
    a model in the catalog, reported (any tier) by a live worker of the job's pool, or
    offered by a profile registered there (WORKER_MODELS) while a worker is live, gets
    none; a model only another pool's worker or a dead worker reports is warned of."""
    api = Api(start_server("api").base)

    def submitted(*models: str) -> dict:
        response = api.post("/api/jobs", json={"service_required": "simulation",
                                                "payload": {"steps": 1},
                                                "requirements": {"models": list(models)}})
        assert response.status_code == 201, response.text
        return response.json()

    assert submitted("no-such-model")["warnings"] == [unknown("no-such-model")]
    catalogued(client, "listed-model")
    live_with(client, "default", "w-res", {"resident-model": "disk"})
    live_with(client, "other", "w-other", {"elsewhere-model": "gpu"})
    assert "warnings" not in submitted("listed-model")
    assert "warnings" not in submitted("resident-model", "listed-model")
    assert submitted("elsewhere-model", "listed-model")["warnings"] == [
        unknown("elsewhere-model")]
    offering = WorkerProfile(worker_id="w-prof", services=["simulation"],
                             models={"simulation": ["offered-model"]})
    QueueFunctions(client, "default").register_worker(offering)
    WorkerRegistry(client).heartbeat(offering.as_dict(), ["default"], [], 60_000)
    assert "warnings" not in submitted("offered-model")  # WORKER_MODELS: no residency
    client.zadd(Keys("default").workers, {"w-res": 1})  # its heartbeat long past
    assert submitted("resident-model")["warnings"] == [unknown("resident-model")]


def test_emp_submit_no_wait_prints_the_model_warning(redis_server: Any,
                                                     client: redis.Redis) -> None:
    """Tried: `emp submit simulation --payload '{"steps": 1}' --requirements '{"models":
    ["no-such-model.safetensors"]}' --no-wait` with nothing anywhere knowing the model.
    Before, it printed the job id and nothing else (waiting, "pending 0%" until its 600 s
    timeout). Now stderr carries the warning; a catalogued model prints none."""
    env = {"EMP_REDIS_URL": redis_server.url}
    unknown_job = run("submit", "simulation", "--payload", '{"steps": 1}', "--requirements",
                      '{"models": ["no-such-model.safetensors"]}', "--no-wait", env=env)
    assert unknown_job.returncode == 0, unknown_job.stderr
    assert f"warning: {unknown('no-such-model.safetensors')}" in unknown_job.stderr
    catalogued(client, "listed.safetensors")
    known_job = run("submit", "simulation", "--payload", '{"steps": 1}', "--requirements",
                    '{"models": "listed.safetensors"}', "--no-wait", env=env)
    assert known_job.returncode == 0 and "warning" not in known_job.stderr, known_job.stderr


class Counted(redis.Connection):
    """A connection counting what it sends: one send is one round trip (a pipeline sends
    all its commands at once)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


def test_the_model_check_costs_one_round_trip_for_catalogued_models_and_none_without(
        redis_server: Any, client: redis.Redis) -> None:
    """The look-up is cheap where it is common: a job requiring models the catalog lists
    costs one round trip more than one requiring none (the catalog read); only a model the
    catalog lacks costs the pool's ``emp_models_held`` too (one more); a job naming no pool
    and requiring no model costs none."""
    counted = redis.Redis(connection_pool=redis.ConnectionPool(
        port=redis_server.port, decode_responses=True, connection_class=Counted))
    counted.ping()

    def trips(named: bool, models: list[str]) -> tuple[int, list[str]]:
        before = Counted.sent
        warnings = unserved_warnings(counted, "nosuch", named, None, ("simulation", models))
        return Counted.sent - before, warnings

    unserved_warnings(counted, "nosuch", False, None, ("simulation", ["warm-up"]))  # loads
    assert trips(False, []) == (0, [])  # the function library, once per server
    catalogued(client, "listed.safetensors")
    assert trips(False, ["listed.safetensors"]) == (1, [])
    assert trips(False, ["no-such-model"]) == (2, [unknown("no-such-model", "nosuch")])
    assert trips(True, [])[0] == 2  # the named pool's check: TIME, then one pipeline
    assert trips(True, ["no-such-model"])[0] == 4
    live_with(client, "nosuch", "w1", {"m-held": "remote"})
    assert trips(False, ["m-held"]) == (2, [])
