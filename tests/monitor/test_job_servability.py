"""Why a pending job waits: whether a live worker can serve its class, and if not, what it lacks."""

from __future__ import annotations

import json

import redis

from capability_router.functions import QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from webapp.monitor.queue import class_servability, queue_summary


def _live(client: redis.Redis, queue: QueueFunctions, profile: WorkerProfile,
          **heartbeat: str) -> None:
    queue.register_worker(profile)
    WorkerRegistry(client).heartbeat(profile.as_dict(), ["default"], [], 60_000, first=True,
                                      **heartbeat)


def _class_of(client: redis.Redis, queue: QueueFunctions, job_id: str, **fields: object) -> str:
    spec = JobSpec.from_fields({"service_required": "simulation", **fields})
    queue.enqueue(job_id, spec, json.dumps({"id": job_id}))
    return client.hget(Keys("default").job(job_id), "class")


def test_no_worker_in_the_pool_is_the_reason(client: redis.Redis,
                                            queue: QueueFunctions) -> None:
    """Tried: a job filed while no worker is registered at all."""
    check = class_servability(client, "default", _class_of(client, queue, "j1"))
    assert check["servable"] is False and check["workers"] == []
    assert "no worker is registered in pool default" in check["reason"]


def test_the_reason_names_what_each_live_worker_has_of_what_the_job_needs(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """Tried: an 80 GB job for customer acme beside a 24 GB worker and a worker of another
    service; then a 96 GB worker joins."""
    _live(client, queue, WorkerProfile(worker_id="small", services=["simulation"],
                                       hardware={"gpu_memory_gb": 24}))
    _live(client, queue, WorkerProfile(worker_id="texty", services=["echo"]))
    csig = _class_of(client, queue, "j1", customer_id="acme",
                     requirements={"hardware": {"gpu_memory_gb": 80}})
    check = class_servability(client, "default", csig)
    assert check["servable"] is False
    assert check["requirements"] == ["hardware.gpu_memory_gb >= 80"]
    reason = check["reason"]
    assert "needs simulation with hardware.gpu_memory_gb >= 80 for customer acme" in reason
    assert "small (hardware.gpu_memory_gb 24)" in reason
    assert "texty (offers only echo)" in reason

    _live(client, queue, WorkerProfile(worker_id="big", services=["simulation"],
                                       hardware={"gpu_memory_gb": 96}))
    check = class_servability(client, "default", csig)
    assert check["servable"] is True and check["workers"] == ["big"]


def test_the_queue_view_counts_a_worker_whose_service_is_down_apart_and_not_as_serving(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """Tried: the only worker able to serve a pending job reports its service down. The
    queue view counted it idle and named it as serving the class, while it claims nothing."""
    profile = WorkerProfile(worker_id="comfy-1", services=["simulation"])
    _live(client, queue, profile, unhealthy="comfyui at 127.0.0.1:8188 refused the connection")
    _class_of(client, queue, "j1")
    summary = queue_summary(client)
    assert summary["workers"] == {"total": 1, "idle": 0, "busy": 0, "service_unhealthy": 1,
                                  "silent": 0}
    row, = summary["classes"]
    assert row["unservable"] is True and row["workers"] == []


def test_a_worker_denying_the_customer_or_tied_to_another_workflow_cannot_serve(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """Tried: a job of customer evil, workflow wf-1, beside a worker denying evil and a
    worker tied to wf-2, both able otherwise. The index keeps compatibility per family
    (no customer, no workflow), so the views check these two restrictions themselves."""
    _live(client, queue, WorkerProfile(worker_id="picky", services=["simulation"],
                                       customer_access={"denied_customers": ["evil"]}))
    _live(client, queue, WorkerProfile(worker_id="tied", services=["simulation"],
                                       workflow_id="wf-2"))
    csig = _class_of(client, queue, "j1", customer_id="evil", workflow_id="wf-1")
    assert class_servability(client, "default", csig)["servable"] is False
    (row,) = [r for r in queue_summary(client)["classes"] if r["class"] == csig]
    assert row["unservable"] is True and row["workers"] == []
    _live(client, queue, WorkerProfile(worker_id="plain", services=["simulation"]))
    assert class_servability(client, "default", csig)["workers"] == ["plain"]
    (row,) = [r for r in queue_summary(client)["classes"] if r["class"] == csig]
    assert row["workers"] == ["plain"]
