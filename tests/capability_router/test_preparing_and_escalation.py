"""emp_preparing and emp_escalate: fenced by attempt, and what they leave on the record."""

from __future__ import annotations

import json

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.profile import WorkerProfile

SD15 = {"comfyui": ["sd15"]}
GPU8 = WorkerProfile(worker_id="small", services=["comfyui"], hardware={"gpu_memory_gb": 8},
                     models=SD15)
GPU24 = WorkerProfile(worker_id="big", services=["comfyui"], hardware={"gpu_memory_gb": 24},
                      models=SD15)
STEP = {"model": "sd15", "tier": "remote", "bytes_done": 10, "bytes_total": 100,
        "eta_seconds": None}


def _claimed(queue: QueueFunctions, profile: WorkerProfile) -> Claimed | int:
    queue.register_worker(profile)
    return queue.claim(profile.signature, profile.worker_id, 60_000)


def _submit(queue: QueueFunctions, job_id: str) -> None:
    spec = JobSpec.from_fields({"service_required": "comfyui",
                                "requirements": {"models": ["sd15"]}})
    queue.enqueue(job_id, spec, json.dumps({"id": job_id}))


def test_preparing_is_fenced_shown_while_assigned_and_gone_at_start(queue, client) -> None:
    _submit(queue, "j1")
    claim = _claimed(queue, GPU8)
    assert queue.preparing("j1", claim.attempt + 1, STEP) == "stale"
    assert queue.preparing("j1", claim.attempt, STEP) == "ok"
    record = client.hgetall(Keys().job("j1"))
    assert record["status"] == "assigned" and json.loads(record["preparing"]) == STEP
    events = client.xrange(Keys().job_events("j1"))
    data = json.loads(events[-1][1]["data"])
    assert events[-1][1]["event"] == "job_preparing"
    assert data["bytes_done"] == 10 and data["eta_seconds"] is None
    assert data["worker_id"] == "small"
    assert queue.start("j1", claim.attempt) == "ok"
    assert "preparing" not in client.hgetall(Keys().job("j1"))
    queue.cancel("j1")
    assert queue.preparing("j1", claim.attempt, STEP) == "cancelled"


def test_escalation_refiles_under_the_raised_class_until_its_steps_are_used(
        queue, client) -> None:
    _submit(queue, "j1")
    claim = _claimed(queue, GPU8)
    queue.preparing("j1", claim.attempt, STEP)
    raised = {"models": ["sd15"], "hardware": {"gpu_memory_gb": 16}}
    step = {"from_gb": None, "to_gb": 16, "worker_id": "small", "error": "OOM"}
    old_class = client.hget(Keys().job("j1"), "class")
    assert queue.escalate("j1", claim.attempt + 1, raised, step, 2) == "stale"
    assert queue.escalate("j1", claim.attempt, raised, step, 2) == "queued"
    record = client.hgetall(Keys().job("j1"))
    assert record["status"] == "pending" and "preparing" not in record
    assert json.loads(record["requirements"]) == raised and record["retries"] == "0"
    assert [s["to_gb"] for s in json.loads(record["escalations"])] == [16]
    assert client.hget(Keys().classes, old_class) is None  # its only job left it
    assert _claimed(queue, GPU8) == 0  # the small GPU cannot take it back
    claim = _claimed(queue, GPU24)
    assert isinstance(claim, Claimed) and claim.job_id == "j1"
    again = {"models": ["sd15"], "hardware": {"gpu_memory_gb": 48}}
    assert queue.escalate("j1", claim.attempt, again, {**step, "to_gb": 48}, 2) == "queued"
    claim = _claimed(queue, WorkerProfile(worker_id="huge", services=["comfyui"],
                                          hardware={"gpu_memory_gb": 80}, models=SD15))
    before = client.hgetall(Keys().job("j1"))
    assert queue.escalate("j1", claim.attempt, raised, step, 2) == "exhausted"
    assert client.hgetall(Keys().job("j1")) == before  # nothing changed
    names = [f["event"] for _, f in client.xrange(Keys().job_events("j1"))]
    assert names.count("job_escalated") == 2
