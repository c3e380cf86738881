"""emp_release: an attempt whose service refused the job goes back without spending budget."""

from __future__ import annotations

import json

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

WORKER = WorkerProfile(worker_id="w", services=["comfyui"])
T0 = 1_700_000_000_000


def submit(queue: QueueFunctions, job_id: str, now: int) -> None:
    spec = JobSpec.from_fields({"service_required": "comfyui"})
    queue.enqueue(job_id, spec, json.dumps({"id": job_id}), now_ms=now)


def claim(queue: QueueFunctions, now: int) -> Claimed:
    claimed = queue.claim(WORKER.signature, WORKER.worker_id, 60_000, now_ms=now)
    assert isinstance(claimed, Claimed), claimed
    return claimed


def test_a_released_job_keeps_its_place_and_budget_up_to_the_bound(
        queue: QueueFunctions, client) -> None:  # noqa: ANN001
    """Tried: release a job twice, with newer jobs behind it and a bound of 2.
    It waits the release delay, then comes before the newer job again; retries and
    the max_attempts count are untouched; the third release is refused ('exhausted')
    and changes nothing."""
    queue.configure(max_service_releases=2, service_release_delay_ms=500, max_attempts=2)
    queue.register_worker(WORKER)
    submit(queue, "old", T0)
    now = T0 + 100
    for n in (1, 2):
        first = claim(queue, now)
        assert first.job_id == "old" and first.attempt == n
        assert queue.release("old", first.attempt, "connection refused", now_ms=now) == "delayed"
        record = client.hgetall(queue.keys.job("old"))
        assert record["status"] == "pending" and record["service_releases"] == str(n)
        assert record["retries"] == "0" and record["last_error"] == "connection refused"
        # Not claimable during the delay: a newer job comes out instead.
        submit(queue, f"new-{n}", now + 1)
        other = claim(queue, now + 2)
        assert other.job_id == f"new-{n}"
        assert queue.complete(other.job_id, other.attempt, {}) == "ok"
        now += 600
    third = claim(queue, now)
    assert (third.job_id, third.attempt) == ("old", 3)
    assert queue.release("old", 3, "connection refused", now_ms=now) == "exhausted"
    assert client.hget(queue.keys.job("old"), "status") == "assigned"
    # Three claims, two of them released: one attempt spent of max_attempts=2, so a
    # lost worker's requeue still returns the job to pending instead of failing it.
    assert queue.requeue("old", 3, "worker lost") == "pending"
    events = [fields for _, fields in client.xrange(queue.keys.job_events("old"))]
    released = [json.loads(e["data"]) for e in events if e["event"] == "job_released"]
    assert [(e["service_releases"], e["max_service_releases"]) for e in released] == [
        (1, 2), (2, 2)]
    assert all(e["reason"] == "connection refused" and e["retry_at"] for e in released)


def test_a_stale_attempt_cannot_release(queue: QueueFunctions) -> None:
    """Tried: release with an old attempt number, and a job that is not running."""
    queue.register_worker(WORKER)
    submit(queue, "job", T0)
    claimed = claim(queue, T0 + 1)
    assert queue.release("job", claimed.attempt + 1, "refused", now_ms=T0 + 2) == "stale"
    assert queue.complete("job", claimed.attempt, {"ok": 1}) == "ok"
    assert queue.release("job", claimed.attempt, "refused", now_ms=T0 + 3) == "completed"
    assert queue.release("missing", 1, "refused") == "missing"
