"""Identifiers that become key names (job ids, workflows, customers) against a real Redis:
no id may address another job's keys."""

from __future__ import annotations

import json

import pytest

from capability_router.errors import InvalidJob
from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

ANY = WorkerProfile(worker_id="any", services=["comfyui"])


def test_a_job_id_naming_another_jobs_event_stream_is_refused(queue: QueueFunctions) -> None:
    """Tried: one tenant files job "order-7:events" (the API's message_id pattern allows
    ':'), another then files job "order-7", whose event stream is the key
    ``job:order-7:events``, already the first job's record. Before the fix the second
    enqueue failed half way with WRONGTYPE (its submit answered an error) yet left the job
    pending; the claim that took it failed the same way, and once its lease expired the
    requeue failed too, leaving it 'pending' in no queue for good (and every claim of the
    pool that housekept it meanwhile answered WRONGTYPE)."""
    spec = JobSpec(service="comfyui")
    before = set(queue.client.keys("*"))
    with pytest.raises(InvalidJob, match="events"):
        queue.enqueue("order-7:events", spec, json.dumps({"id": "order-7:events"}))
    assert set(queue.client.keys("*")) == before, "a refused job id wrote something"
    assert queue.enqueue("order-7", spec, json.dumps({"id": "order-7"}))[0] == "queued"
    queue.register_worker(ANY)
    claimed = queue.claim(ANY.signature, "any", 60_000)
    assert isinstance(claimed, Claimed) and claimed.job_id == "order-7"
    assert queue.complete("order-7", claimed.attempt, {"ok": True}) == "ok"
    assert queue.client.hget(queue.keys.job("order-7"), "status") == "completed"
