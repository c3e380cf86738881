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


def test_an_unreceived_claim_goes_back_at_its_place_without_spending_an_attempt(
        queue: QueueFunctions, client) -> None:  # noqa: ANN001
    """Tried: worker "w" claims "old" but never gets the reply (emp_unclaim with
    nothing held), while it holds "held" (delivered, unstarted), "running" has started,
    and another worker has "theirs". Only "old" goes back, before the newer jobs, with
    a job_released event; its lost attempt does not count: with max_attempts=2, two
    later attempts lost to workers (lease expiries) requeue it once and fail it only
    at the second (before: it failed at the first, after 2 attempts)."""
    other = WorkerProfile(worker_id="x", services=["comfyui"])
    queue.configure(max_attempts=2)
    queue.register_worker(WORKER)
    queue.register_worker(other)
    for n, job_id in enumerate(("old", "held", "running", "theirs", "newer")):
        submit(queue, job_id, T0 + n)
    now = T0 + 100
    assert claim(queue, now).job_id == "old"
    held = claim(queue, now)
    running = claim(queue, now)
    assert queue.start(running.job_id, running.attempt) == "ok"
    theirs = queue.claim(other.signature, "x", 60_000, now_ms=now)
    assert theirs.job_id == "theirs"
    assert queue.unclaim("w", [held.job_id], now_ms=now + 1) == ["old"]
    record = client.hgetall(queue.keys.job("old"))
    assert (record["status"], record["worker_id"], record["unreceived"]) == ("pending", "", "1")
    assert client.hget(queue.keys.job("held"), "status") == "assigned"
    assert client.hget(queue.keys.job("theirs"), "status") == "assigned"
    assert client.zscore(queue.keys.leases, "old") is None
    events = [f for _, f in client.xrange(queue.keys.job_events("old"))]
    assert events[-1]["event"] == "job_released"
    assert "never received" in json.loads(events[-1]["data"])["reason"]
    again = claim(queue, now + 2)
    assert (again.job_id, again.attempt) == ("old", 2)
    assert queue.requeue("old", 2, "worker lost") == "pending"
    third = claim(queue, now + 3)
    assert (third.job_id, third.attempt) == ("old", 3)
    assert queue.requeue("old", 3, "worker lost") == "failed"
    assert queue.unclaim("w", [held.job_id], now_ms=now + 4) == []
