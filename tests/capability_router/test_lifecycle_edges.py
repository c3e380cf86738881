"""Job lifecycle edges of the function library against a real Redis: retries, lease
expiry and the attempt budget."""

from __future__ import annotations

import json

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

ANY = WorkerProfile(worker_id="any", services=["comfyui"])
T = 1_800_000_000_000


def test_retries_do_not_use_up_the_attempts_a_dying_worker_is_allowed(
    queue: QueueFunctions,
) -> None:
    """Tried: a job with max_retries=20 (the API allows 100) fails and retries 12 times,
    then the worker running it dies once (its lease expires). Before the fix every claim
    counted against EMP_MAX_ATTEMPTS (10), retries included, so that single expiry failed
    the job for good ("lease expired; gave up after 13 attempts") with 8 retries left.
    The budget is for attempts that ended without an outcome: the job goes back to
    pending, and only the tenth such attempt fails it."""
    queue.register_worker(ANY)
    spec = JobSpec(service="comfyui", max_retries=20)
    queue.enqueue("retrier", spec, json.dumps({"id": "retrier"}), now_ms=T)
    now = T
    for _ in range(12):
        now += 10
        claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=now)
        assert isinstance(claimed, Claimed) and claimed.job_id == "retrier"
        assert (
            queue.retry("retrier", claimed.attempt, 0, json.dumps({"id": "retrier"}), "boom")
            == "queued"
        )
    record = queue.client.hgetall(queue.keys.job("retrier"))
    assert (record["attempts"], record["retries"]) == ("12", "12")
    for deaths in range(1, 11):
        now += 10
        claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=now)
        assert isinstance(claimed, Claimed) and claimed.job_id == "retrier"
        now += 1_001
        queue.sweep(now_ms=now)
        status = queue.client.hget(queue.keys.job("retrier"), "status")
        if deaths < 10:
            assert status == "pending", f"failed after {deaths} lease expiries"
    record = queue.client.hgetall(queue.keys.job("retrier"))
    assert record["status"] == "failed" and "gave up" in record["last_error"]
