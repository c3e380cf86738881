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


def test_a_replace_refiles_the_job_as_the_replacement_and_a_stale_one_changes_nothing(
    queue: QueueFunctions,
) -> None:
    """Tried: a claimed comfyui job (a routing estimate of 5 s counted in the pool's load)
    replaced by a simulation job (``emp_replace``, what ``Task.replace`` in a job calls),
    first by an attempt that no longer holds it, then by the one that does, then twelve
    more times, then its worker dies once. The stale replace is refused and no key
    changes; the replace files the job under the simulation class (only a simulation
    worker claims it), clears the old estimate from the record and the load, moves the
    service index and records the step; the replaces spend none of the ten attempts a
    dying worker is allowed; a replace of a completed job is refused."""
    sim = WorkerProfile(worker_id="sim", services=["simulation"])
    queue.register_worker(ANY, now_ms=T)
    queue.register_worker(sim, now_ms=T)
    first = JobSpec(service="comfyui", customer_id="acme",
                    routing={"predicted_ms": "5000", "duration_key": "comfyui"})
    queue.enqueue("r", first, json.dumps({"id": "r"}), now_ms=T)
    claimed = queue.claim(ANY.signature, "any", 60_000, now_ms=T + 1)
    assert isinstance(claimed, Claimed) and claimed.attempt == 1
    replacement = JobSpec(service="simulation", customer_id="acme", max_retries=7).header()
    step = {"from_task": "t.comfy", "to_task": "t.sim"}
    everything = {key: queue.client.dump(key) for key in queue.client.keys("*")}
    assert queue.replace("r", 2, replacement, json.dumps({"id": "r2"}), step) == "stale"
    assert {key: queue.client.dump(key) for key in queue.client.keys("*")} == everything
    assert queue.replace("r", 1, replacement, json.dumps({"id": "r2"}), step) == "queued"
    record = queue.client.hgetall(queue.keys.job("r"))
    assert record["status"] == "pending" and record["service_required"] == "simulation"
    assert record["class"] == replacement["class"] and record["max_retries"] == "7"
    assert "predicted_ms" not in record and "duration_key" not in record
    assert record["customer_id"] == "acme" and record["message"] == json.dumps({"id": "r2"})
    assert json.loads(record["replaced"]) == [{**step, "from_service": "comfyui",
                                               "to_service": "simulation", "attempt": 1,
                                               "retries": 0,
                                               "at": int(record["replaced_at"])}]
    assert queue.client.hmget(queue.keys.load, "unfinished_ms",
                              "unfinished") == ["0", "0"]
    assert queue.client.zrange(queue.keys.field_index("service", "comfyui"), 0, -1) == []
    assert queue.client.zrange(queue.keys.field_index("service", "simulation"), 0, -1) == ["r"]
    assert not isinstance(queue.claim(ANY.signature, "any", 1_000, now_ms=T + 2), Claimed)
    now = T + 2
    for n in range(12):
        now += 10
        profile = sim if n % 2 == 0 else ANY
        claimed = queue.claim(profile.signature, profile.worker_id, 1_000, now_ms=now)
        assert isinstance(claimed, Claimed) and claimed.job_id == "r", n
        back = JobSpec(service="comfyui" if n % 2 == 0 else "simulation",
                       customer_id="acme").header()
        assert queue.replace("r", claimed.attempt, back, "{}", step) == "queued"
    claimed = queue.claim(sim.signature, "sim", 1_000, now_ms=now + 10)
    assert isinstance(claimed, Claimed)
    queue.sweep(now_ms=now + 2_000)
    assert queue.client.hget(queue.keys.job("r"), "status") == "pending"  # not given up
    claimed = queue.claim(sim.signature, "sim", 1_000, now_ms=now + 3_000)
    assert queue.complete("r", claimed.attempt, "done") == "ok"
    assert queue.replace("r", claimed.attempt, replacement, "{}", step) == "completed"


def test_a_replace_with_a_countdown_waits_then_runs_under_the_replacements_class(
    queue: QueueFunctions,
) -> None:
    """Tried: a claimed comfyui job replaced by a simulation job due in 5 s (Celery's
    ``countdown`` on the replacement signature). It waits in the delayed set (no worker
    claims it before), then only the simulation worker takes it."""
    sim = WorkerProfile(worker_id="sim", services=["simulation"])
    queue.register_worker(ANY, now_ms=T)
    queue.register_worker(sim, now_ms=T)
    queue.enqueue("later", JobSpec(service="comfyui"), json.dumps({"id": "later"}), now_ms=T)
    claimed = queue.claim(ANY.signature, "any", 60_000, now_ms=T + 1)
    assert isinstance(claimed, Claimed)
    replacement = JobSpec(service="simulation").header()
    assert queue.replace("later", 1, replacement, "{}", {"from_task": "a", "to_task": "b"},
                         due_ms=T + 5_000) == "delayed"
    assert queue.client.hget(queue.keys.job("later"), "retry_at") == str(T + 5_000)
    assert not isinstance(queue.claim(sim.signature, "sim", 1_000, now_ms=T + 4_000), Claimed)
    assert not isinstance(queue.claim(ANY.signature, "any", 1_000, now_ms=T + 6_000), Claimed)
    claimed = queue.claim(sim.signature, "sim", 1_000, now_ms=T + 6_001)
    assert isinstance(claimed, Claimed) and claimed.job_id == "later"


def test_a_resubmitted_job_counts_its_replaces_afresh(queue: QueueFunctions) -> None:
    """Tried: a job replaced once, then failed and resubmitted. Before, its ``replaces``
    stayed 1 while ``attempts_before`` restarted the allowance: the earlier replace was
    subtracted again, granting the new run one attempt more than max_attempts."""
    queue.register_worker(ANY, now_ms=T)
    queue.enqueue("again", JobSpec(service="comfyui"), "{}", now_ms=T)
    claimed = queue.claim(ANY.signature, "any", 60_000, now_ms=T + 1)
    assert queue.replace("again", claimed.attempt, JobSpec(service="comfyui").header(), "{}",
                         {"from_task": "a", "to_task": "b"}) == "queued"
    claimed = queue.claim(ANY.signature, "any", 60_000, now_ms=T + 2)
    assert queue.fail("again", claimed.attempt, "boom") == "ok"
    assert queue.resubmit("again") == "pending"
    assert queue.client.hget(queue.keys.job("again"), "replaces") == "0"


def test_a_replace_restarts_retries_at_zero_and_those_before_spend_no_attempt(
    queue: QueueFunctions,
) -> None:
    """Tried: a job (max_retries 20) that retried 12 times, then was replaced, then its
    worker died once, then it failed and was resubmitted. Before, the record's
    ``retries`` kept counting (12) while Celery's message of the replacement starts at
    0 (its ``request.retries``). Now the replace sets ``retries`` to 0, the step keeps
    the 12 and ``replaced_retries`` adds them, so the death finds the ten-attempt crash
    allowance unspent (pending, not given up); a resubmit clears ``replaced_retries``."""
    queue.register_worker(ANY, now_ms=T)
    queue.enqueue("rr", JobSpec(service="comfyui", max_retries=20), "{}", now_ms=T)
    now = T
    for _ in range(12):
        now += 10
        claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=now)
        assert queue.retry("rr", claimed.attempt, 0, "{}", "boom") == "queued"
    claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=now + 10)
    assert queue.replace("rr", claimed.attempt, JobSpec(service="comfyui").header(), "{}",
                         {"from_task": "a", "to_task": "b"}) == "queued"
    record = queue.client.hgetall(queue.keys.job("rr"))
    assert (record["retries"], record["replaced_retries"]) == ("0", "12"), record
    assert json.loads(record["replaced"])[0]["retries"] == 12
    claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=now + 20)
    assert isinstance(claimed, Claimed) and claimed.attempt == 14
    queue.sweep(now_ms=now + 2_000)
    assert queue.client.hget(queue.keys.job("rr"), "status") == "pending"  # not given up
    claimed = queue.claim(ANY.signature, "any", 1_000, now_ms=now + 2_010)
    assert queue.fail("rr", claimed.attempt, "boom") == "ok"
    assert queue.resubmit("rr") == "pending"
    assert queue.client.hget(queue.keys.job("rr"), "replaced_retries") == "0"
