"""A finished job's record agrees with its status; the history of its attempts is the event log."""

from __future__ import annotations

import json

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.profile import WorkerProfile

ANY = WorkerProfile(worker_id="w1", services=["comfyui"])


def _claim(queue: QueueFunctions, job_id: str) -> Claimed:
    claimed = queue.claim(ANY.signature, ANY.worker_id, 60_000)
    assert isinstance(claimed, Claimed) and claimed.job_id == job_id
    return claimed


def test_a_job_that_completes_after_retries_keeps_no_last_error(queue: QueueFunctions,
                                                                  client) -> None:
    """Tried: an attempt retried with an error, one requeued (lease lost), then a success.

    The record of the completed job carried the last retry's error in
    ``last_error``, contradicting its status; the errors stay in its events.
    """
    queue.register_worker(ANY)
    spec = JobSpec.from_fields({"service_required": "comfyui"})
    queue.enqueue("job-1", spec, json.dumps({"id": "job-1"}))
    first = _claim(queue, "job-1")
    assert queue.retry("job-1", first.attempt, 0, json.dumps({"id": "job-1"}),
                       "CUDA out of memory") == "queued"
    second = _claim(queue, "job-1")
    assert queue.requeue("job-1", second.attempt, "worker lost") == "pending"
    third = _claim(queue, "job-1")
    assert client.hget(Keys("default").job("job-1"), "last_error") == "worker lost"

    assert queue.complete("job-1", third.attempt, {"ok": True}) == "ok"

    record = client.hgetall(Keys("default").job("job-1"))
    assert record["status"] == "completed"
    assert "last_error" not in record
    events = client.xrange(Keys("default").job_events("job-1"))
    history = [(fields["event"], json.loads(fields["data"]).get("error")
                or json.loads(fields["data"]).get("reason")) for _, fields in events]
    assert ("job_retrying", "CUDA out of memory") in history
    assert ("job_requeued", "worker lost") in history
    assert history[-1][0] == "complete_job"


def test_a_failed_or_cancelled_job_keeps_its_error(queue: QueueFunctions, client) -> None:
    """Tried: failing one job and cancelling another; their records still say why."""
    queue.register_worker(ANY)
    spec = JobSpec.from_fields({"service_required": "comfyui"})
    queue.enqueue("job-f", spec, json.dumps({"id": "job-f"}))
    claimed = _claim(queue, "job-f")
    assert queue.fail("job-f", claimed.attempt, "EchoFailure: boom") == "ok"
    queue.enqueue("job-c", spec, json.dumps({"id": "job-c"}))
    queue.cancel("job-c", "operator said so")
    assert client.hget(Keys("default").job("job-f"), "last_error") == "EchoFailure: boom"
    assert client.hget(Keys("default").job("job-c"), "last_error") == "operator said so"
