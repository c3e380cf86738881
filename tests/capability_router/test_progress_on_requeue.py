"""A job that goes back to pending starts its progress over: the record of a job
waiting again must not say how far an earlier run got."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

ANY = WorkerProfile(worker_id="any", services=["comfyui"])
T = 1_800_000_000_000


def _running_at_60(queue: QueueFunctions, job_id: str) -> Claimed:
    """A job claimed, started and reported at 60%."""
    queue.register_worker(ANY, now_ms=T)
    queue.enqueue(job_id, JobSpec(service="comfyui"), json.dumps({"id": job_id}), now_ms=T)
    claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=T + 10)
    assert isinstance(claimed, Claimed) and claimed.job_id == job_id
    assert queue.start(job_id, claimed.attempt, now_ms=T + 20) == "ok"
    assert queue.progress(job_id, claimed.attempt, 60, {"message": "step 6 of 10"}) == "ok"
    return claimed


def _lease_expired(queue: QueueFunctions, job_id: str, claimed: Claimed) -> None:
    queue.sweep(now_ms=T + 5_000)


def _retry_with_countdown(queue: QueueFunctions, job_id: str, claimed: Claimed) -> None:
    assert queue.retry(job_id, claimed.attempt, T + 60_000, json.dumps({"id": job_id}),
                       "boom") == "delayed"


def _retry_now(queue: QueueFunctions, job_id: str, claimed: Claimed) -> None:
    assert queue.retry(job_id, claimed.attempt, 0, json.dumps({"id": job_id}),
                       "boom") == "queued"


def _service_released(queue: QueueFunctions, job_id: str, claimed: Claimed) -> None:
    assert queue.release(job_id, claimed.attempt, "connection refused") == "delayed"


def _requeued(queue: QueueFunctions, job_id: str, claimed: Claimed) -> None:
    assert queue.requeue(job_id, claimed.attempt, "worker shut down") == "pending"


def _escalated(queue: QueueFunctions, job_id: str, claimed: Claimed) -> None:
    assert queue.escalate(job_id, claimed.attempt, {"gpu_memory_gb": 48},
                          {"error": "CUDA out of memory"}, 3) == "queued"


def _failed_then_resubmitted(queue: QueueFunctions, job_id: str, claimed: Claimed) -> None:
    assert queue.fail(job_id, claimed.attempt, "boom") == "ok"
    assert queue.resubmit(job_id) == "pending"


@pytest.mark.parametrize("back_to_pending", [
    _lease_expired, _retry_with_countdown, _retry_now, _service_released, _requeued,
    _escalated, _failed_then_resubmitted,
])
def test_a_job_back_to_pending_reports_no_progress_of_its_earlier_run(
    queue: QueueFunctions,
    back_to_pending: Callable[[QueueFunctions, str, Claimed], None],
) -> None:
    """Tried: a job reported 60% ("step 6 of 10"), then went back to pending each way
    the library sends it there (its worker died and the lease expired, a retry with and
    without a countdown, its service refused it, a requeue, an out-of-memory
    escalation, a failure then a resubmit). Before the fix the record kept
    ``progress`` 60 and its details, so REST ``GET /api/jobs/<id>`` and the monitor
    showed a waiting job at 60%. Now the fields are gone, as on a job never run,
    and the next run reports from 0."""
    claimed = _running_at_60(queue, "j")
    back_to_pending(queue, "j", claimed)
    record = queue.client.hgetall(queue.keys.job("j"))
    assert record["status"] == "pending"
    assert "progress" not in record and "progress_details" not in record, record


def test_a_service_release_with_no_delay_and_an_unclaim_clear_progress_too(
    queue: QueueFunctions,
) -> None:
    """Tried: the two hand-backs left out above, a service release filed at once
    (service_release_delay_ms 0) and a claim whose reply was lost (emp_unclaim), the
    latter on a job that reported 60% in its run before. Before the fix both kept 60."""
    queue.configure(service_release_delay_ms=0)
    claimed = _running_at_60(queue, "j")
    assert queue.release("j", claimed.attempt, "connection refused") == "queued"
    record = queue.client.hgetall(queue.keys.job("j"))
    assert "progress" not in record, record
    claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=T + 30)
    assert isinstance(claimed, Claimed)
    # A record written by an older library (progress kept over a requeue) unclaimed.
    queue.client.hset(queue.keys.job("j"), "progress", "60")
    assert queue.unclaim("any", [], now_ms=T + 40) == ["j"]
    record = queue.client.hgetall(queue.keys.job("j"))
    assert record["status"] == "pending" and "progress" not in record, record
