"""Queue semantics of the function library: races, starvation, order, leases, bad input."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from capability_router.errors import InvalidJob
from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

GPU8 = WorkerProfile(worker_id="small", services=["comfyui"], hardware={"gpu_memory_gb": 8})
ANY = WorkerProfile(worker_id="any", services=["comfyui"])


def enqueue(queue: QueueFunctions, job_id: str, now_ms: int | None = None, **fields: object):
    spec = JobSpec.from_fields({"service_required": "comfyui", **fields})
    return queue.enqueue(job_id, spec, json.dumps({"id": job_id}), now_ms=now_ms)


def claim_all(queue: QueueFunctions, profile: WorkerProfile, now_ms: int | None = None) -> list:
    queue.register_worker(profile)
    order = []
    while isinstance(c := queue.claim(profile.signature, profile.worker_id, 60_000,
                                      now_ms=now_ms), Claimed):
        order.append(c.job_id)
    return order


def test_racing_claimers_never_share_a_job(queue: QueueFunctions, redis_server) -> None:
    queue.register_worker(ANY)
    for i in range(600):
        enqueue(queue, f"job-{i}", priority=i % 7)
    claimed: list[list[str]] = []

    def claimer(n: int) -> None:
        client = redis.Redis(port=redis_server.port, decode_responses=True)
        mine = QueueFunctions(client, "default")
        got = []
        while isinstance(c := mine.claim(ANY.signature, f"racer-{n}", 60_000), Claimed):
            got.append(c.job_id)
        claimed.append(got)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [job for got in claimed for job in got]
    assert len(every) == 600 and len(set(every)) == 600
    assert sum(1 for got in claimed if got) > 1, "only one claimer ever won"


def test_servable_job_behind_ten_thousand_unservable_is_claimed_at_once(
        queue: QueueFunctions) -> None:
    big = JobSpec(service="comfyui", requirements={"hardware": {"gpu_memory_gb": 80}},
                  priority=100)
    with queue.client.pipeline(transaction=False) as pipe:
        for i in range(10_000):
            name, keys, args = queue.enqueue_call(f"big-{i}", big, "{}")
            pipe.fcall(name, len(keys), *keys, *args)
        assert all(reply[0] == "queued" for reply in pipe.execute())
    enqueue(queue, "small-one", priority=0)
    queue.register_worker(GPU8)
    started = time.perf_counter()
    claimed = queue.claim(GPU8.signature, "small", 60_000)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"claim behind 10,000 unservable jobs took {elapsed_ms:.2f} ms round trip")
    assert isinstance(claimed, Claimed) and claimed.job_id == "small-one"
    assert queue.client.zcard(queue.keys.pending(big.class_signature)) == 10_000


def test_order_priority_then_time_to_the_millisecond(queue: QueueFunctions) -> None:
    t = 1_800_000_000_000
    # Submitted out of order; expected order in the comment of each line.
    enqueue(queue, "p50-t+2", now_ms=t + 2)                 # 4th: same priority, later
    enqueue(queue, "p50-t+1", now_ms=t + 1)                 # 3rd: one millisecond earlier
    enqueue(queue, "p90", now_ms=t + 5, priority=90)        # 1st: highest priority
    enqueue(queue, "p10", now_ms=t, priority=10)            # 6th: lowest priority
    enqueue(queue, "wf-old", now_ms=t + 9, priority=50,     # 2nd: workflow priority 60
            workflow_id="wf", workflow_priority=60)
    enqueue(queue, "wf-dated", now_ms=t + 9, priority=50,   # 5th: workflow datetime t+3
            workflow_id="wf2", workflow_datetime=t + 3)
    assert claim_all(queue, ANY, now_ms=t + 10) == [
        "p90", "wf-old", "p50-t+1", "p50-t+2", "wf-dated", "p10"]


def test_older_workflow_steps_run_before_newer_workflow(queue: QueueFunctions) -> None:
    t = 1_800_000_000_000
    enqueue(queue, "new-step1", now_ms=t, workflow_id="new", workflow_datetime=t + 100)
    enqueue(queue, "old-step2", now_ms=t + 50, workflow_id="old", workflow_datetime=t)
    assert claim_all(queue, ANY, now_ms=t + 60) == ["old-step2", "new-step1"]


def test_retried_job_keeps_its_place(queue: QueueFunctions) -> None:
    queue.register_worker(ANY)
    enqueue(queue, "first")
    first = queue.claim(ANY.signature, "any", 60_000)
    enqueue(queue, "newer")
    assert queue.retry("first", first.attempt, 0, json.dumps({"id": "first"}), "boom") == "queued"
    assert claim_all(queue, ANY) == ["first", "newer"]


def test_retry_waits_in_redis_until_due(queue: QueueFunctions) -> None:
    queue.register_worker(ANY)
    enqueue(queue, "later")
    claimed = queue.claim(ANY.signature, "any", 60_000)
    due = int(time.time() * 1000) + 400
    assert queue.retry("later", claimed.attempt, due, "{}", "boom") == "delayed"
    hint = queue.claim(ANY.signature, "any", 60_000)
    assert isinstance(hint, int) and 0 < hint <= 400, "not due yet; the claim says when"
    time.sleep(0.45)
    again = queue.claim(ANY.signature, "any", 60_000)
    assert isinstance(again, Claimed) and again.attempt == 2


def test_expired_lease_returns_job_and_fences_the_old_attempt(queue: QueueFunctions) -> None:
    t = 1_800_000_000_000
    queue.register_worker(ANY)
    enqueue(queue, "leased", now_ms=t)
    first = queue.claim(ANY.signature, "dead", 1_000, now_ms=t)
    assert queue.sweep(now_ms=t + 500) == 0
    assert queue.sweep(now_ms=t + 1_001) == 1
    record = queue.client.hgetall(queue.keys.job("leased"))
    assert record["status"] == "pending" and record["attempts"] == "1"
    second = queue.claim(ANY.signature, "alive", 60_000, now_ms=t + 1_002)
    assert second.attempt == 2
    assert queue.complete("leased", first.attempt, {"from": "dead"}) == "stale"
    assert queue.complete("leased", second.attempt, {"from": "alive"}) == "ok"
    assert queue.complete("leased", second.attempt, {"again": True}) == "completed"


def test_cancelled_pending_job_is_never_claimed(queue: QueueFunctions) -> None:
    enqueue(queue, "doomed")
    assert queue.cancel("doomed")[:2] == ("cancelled", "pending")
    assert claim_all(queue, ANY) == []
    assert queue.cancel("doomed") == ("cancelled",)


def test_completion_after_cancel_is_refused(queue: QueueFunctions) -> None:
    queue.register_worker(ANY)
    enqueue(queue, "running")
    claimed = queue.claim(ANY.signature, "any", 60_000)
    assert queue.start("running", claimed.attempt, "any") == "ok"
    assert queue.cancel("running") == ("cancelled", "in_progress", "any")
    assert queue.progress("running", claimed.attempt, 50) == "cancelled"
    assert queue.complete("running", claimed.attempt, {"late": True}) == "cancelled"
    assert queue.client.hget(queue.keys.job("running"), "status") == "cancelled"


@pytest.mark.parametrize("fields,message", [
    ({"requirements": "gpu please"}, "requirements must be a JSON object"),
    ({"requirements": {"hardware": {"gpu_memory_gb": "lots"}}},
     "requirements.hardware.gpu_memory_gb must be a number or 'all'"),
    ({"requirements": {"hardware": {"gpu_memory_gb": -4}}}, "non-negative"),
    # Python's submit took these (REST parses strictly before): the class was stored with a
    # bare Infinity, which no strict reader of the record or the listing takes, and no
    # worker could ever serve it
    ({"requirements": {"hardware": {"gpu_memory_gb": float("inf")}}},
     "requirements.hardware.gpu_memory_gb must be a finite number, got inf"),
    ({"requirements": {"hardware": {"gpu_memory_gb": "1e999"}}}, "must be a finite number"),
    ({"requirements": {"vram_bandwidth": float("-inf")}},
     "requirements.vram_bandwidth must be a finite number, got -inf"),
    ({"requirements": {"speeds": [1.5, float("nan")]}},
     "requirements.speeds items must be a finite number, got nan"),
    ({"requirements": {"negative_requirements": {"region": float("inf")}}},
     "requirements.negative_requirements.region must be a finite number"),
    ({"requirements": {"models": [1, 2]}}, "requirements.models"),
    ({"requirements": {"customer_isolation": "paranoid"}}, "customer_isolation must be one of"),
    ({"requirements": {"customer_isolation": "strict"}}, "has no customer_id"),
    ({"requirements": {"region": None}}, "requirements.region must be"),
    ({"requirements": {"features": []}}, "must not be an empty list"),
    ({"requirements": {"service_type": "a1111"}}, "but the job's service is 'comfyui'"),
    ({"priority": 101}, "priority must be between 0 and 100"),
    ({"priority": "high"}, "priority must be an integer"),
    # Passed a check of str.isdigit() (after stripping every dash), then int() raised a bare
    # ValueError: a superscript two and a doubled sign.
    ({"priority": "\u00b2"}, "priority must be an integer 0-100, got '\u00b2'"),
    ({"priority": "--5"}, "priority must be an integer 0-100, got '--5'"),
    ({"payload": [1, 2]}, "payload must be a JSON object"),
    # From Python only (JSON keys are strings): Python's "keywords must be strings" then
    ({"payload": {1: "a"}}, "payload keys must be strings (the task's keyword arguments), got 1"),
    ({"workflow_datetime": "yesterday"}, "workflow_datetime must be"),
    ({"flavour": "vanilla"}, "unknown job field(s): flavour"),
])
def test_malformed_job_is_rejected_and_nothing_is_written(
        queue: QueueFunctions, fields: dict, message: str) -> None:
    before = sorted(queue.client.keys("*"))
    with pytest.raises(InvalidJob) as error:
        JobSpec.from_fields({"service_required": "comfyui", **fields})
    assert message in str(error.value)
    assert sorted(queue.client.keys("*")) == before


def test_ack_of_an_attempt_without_outcome_fails_it(queue: QueueFunctions) -> None:
    """A hard time limit kills the task before it records anything; the ack says so."""
    queue.register_worker(ANY)
    enqueue(queue, "killed")
    enqueue(queue, "finished")
    killed = queue.claim(ANY.signature, "any", 60_000)
    finished = queue.claim(ANY.signature, "any", 60_000)
    assert queue.complete("finished", finished.attempt, {"ok": True}) == "ok"
    assert queue.ack([("killed", killed.attempt), ("finished", finished.attempt)]) == 1
    record = queue.client.hgetall(queue.keys.job("killed"))
    assert record["status"] == "failed" and "without recording an outcome" in record["last_error"]
    assert queue.client.hget(queue.keys.job("finished"), "status") == "completed"


def test_idle_worker_is_woken_only_by_a_job_it_can_serve(queue: QueueFunctions) -> None:
    queue.register_worker(GPU8)
    assert queue.claim(GPU8.signature, "small", 60_000, idle_ms=5_000) == 0
    wake = queue.keys.wake("small")
    enqueue(queue, "too-big", requirements={"hardware": {"gpu_memory_gb": 80}})
    assert queue.client.llen(wake) == 0, "woken for a job it cannot run"
    enqueue(queue, "fits", requirements={"hardware": {"gpu_memory_gb": 8}})
    assert queue.client.llen(wake) == 1
    enqueue(queue, "fits-too")
    assert queue.client.llen(wake) == 1, "a worker is woken once per idle mark"


def test_oversize_result_is_kept_as_a_marked_preview(queue: QueueFunctions) -> None:
    queue.register_worker(ANY)
    enqueue(queue, "huge")
    claimed = queue.claim(ANY.signature, "any", 60_000)
    assert queue.complete("huge", claimed.attempt, {"blob": "x" * 200_000}) == "ok"
    stored = json.loads(queue.client.hget(queue.keys.job("huge"), "result"))
    assert stored["truncated"] is True and stored["bytes"] > 200_000
    assert len(stored["preview"]) == 1024


def test_renewal_reports_only_attempts_lost_while_running(queue: QueueFunctions) -> None:
    """A finished or retrying attempt whose ack is still on its way is not 'lost';
    one whose lease expired (requeued, or taken by another attempt) is."""
    t = 1_800_000_000_000
    queue.register_worker(ANY)
    for job_id in ("done", "retrying", "expired"):
        enqueue(queue, job_id, now_ms=t)
    held = {c.job_id: c.attempt for c in
            (queue.claim(ANY.signature, "w", 1_000, now_ms=t) for _ in range(3))}
    assert queue.renew("w", 1_000, list(held.items())) == []
    queue.complete("done", held["done"], {})
    queue.retry("retrying", held["retrying"], 0, json.dumps({"id": "retrying"}), "again")
    queue.client.hset(queue.keys.job("expired"), "lease_until", t + 1)
    queue.client.zadd(queue.keys.leases, {"expired": t + 1})
    assert queue.sweep(now_ms=t + 2) == 1
    assert queue.renew("w", 1_000, list(held.items())) == ["expired"]
    other = queue.claim(ANY.signature, "w2", 1_000)
    assert isinstance(other, Claimed)
    assert "expired" in queue.renew("w", 1_000, [("expired", held["expired"])])


def test_workflow_milestones_are_events(queue: QueueFunctions) -> None:
    """Step 1 submitted -> workflow_submitted; the last step completed ->
    workflow_completed; a step failed for good -> workflow_failed (a retry is not)."""
    queue.register_worker(ANY)

    def milestones() -> list[tuple[str, str]]:
        return [(f["event"], json.loads(f["data"])["workflow_id"])
                for _, f in queue.client.xrange(queue.keys.events)
                if f["event"].startswith("workflow_")]

    enqueue(queue, "s1", workflow_id="wf1", current_step=1, total_steps=2)
    assert milestones() == [("workflow_submitted", "wf1")]
    first = queue.claim(ANY.signature, "w", 60_000)
    queue.complete("s1", first.attempt, {})
    enqueue(queue, "s2", workflow_id="wf1", current_step=2, total_steps=2)
    assert milestones() == [("workflow_submitted", "wf1")], "step 1 done, step 2 only queued"
    second = queue.claim(ANY.signature, "w", 60_000)
    queue.complete("s2", second.attempt, {})
    assert milestones()[-1] == ("workflow_completed", "wf1")

    enqueue(queue, "t1", workflow_id="wf2", current_step=1, total_steps=3)
    third = queue.claim(ANY.signature, "w", 60_000)
    queue.retry("t1", third.attempt, 0, json.dumps({"id": "t1"}), "transient")
    assert milestones()[-1] == ("workflow_submitted", "wf2"), "a retry is not a failure"
    fourth = queue.claim(ANY.signature, "w", 60_000)
    queue.fail("t1", fourth.attempt, "broken for good")
    assert milestones() == [("workflow_submitted", "wf1"), ("workflow_completed", "wf1"),
                            ("workflow_submitted", "wf2"), ("workflow_failed", "wf2")]


def test_workflow_milestones_name_the_customer_only_when_the_job_has_one(
        queue: QueueFunctions) -> None:
    """Tried: a workflow step submitted with no customer_id, and one with a customer, each
    run to its end. Before, the customer-less workflow's workflow_submitted and
    workflow_completed events (client sockets, monitors, webhooks) said
    ``"customer_id": false``, a boolean where a client of the original reads a string:
    Lua's HMGET gives false for a missing field. Now it is left out, as the job's other
    events leave it out; a customer's workflow still names it."""
    queue.register_worker(ANY)
    enqueue(queue, "n1", workflow_id="wf-none", current_step=1, total_steps=1)
    enqueue(queue, "c1", workflow_id="wf-cust", current_step=1, total_steps=1,
            customer_id="acme")
    for _ in range(2):
        claimed = queue.claim(ANY.signature, "w", 60_000)
        queue.complete(claimed.job_id, claimed.attempt, {})
    data = {(f["event"], f["job_id"]): json.loads(f["data"])
            for _, f in queue.client.xrange(queue.keys.events)
            if f["event"].startswith("workflow_")}
    assert set(data) == {(e, j) for e in ("workflow_submitted", "workflow_completed")
                         for j in ("n1", "c1")}
    for event in ("workflow_submitted", "workflow_completed"):
        assert "customer_id" not in data[(event, "n1")], data[(event, "n1")]
        assert data[(event, "c1")]["customer_id"] == "acme"


def test_a_cancel_fenced_by_attempt_spares_the_jobs_next_run(queue: QueueFunctions) -> None:
    """Tried: a run cancelled by a user, the job resubmitted and claimed again, then the
    first run's worker reporting its stop (Celery's task_revoked, late under load) with a
    cancel fenced by its attempt. Before, that late cancel ended the new run too."""
    profile = WorkerProfile.from_dict({"worker_id": "w", "services": ["echo"]})
    queue.register_worker(profile)
    queue.enqueue("j", JobSpec(service="echo"), "{}")
    first = queue.claim(profile.signature, "w", 30_000)
    assert isinstance(first, Claimed) and first.attempt == 1
    assert queue.cancel("j")[0] == "cancelled"
    assert queue.resubmit("j") == "pending"
    second = queue.claim(profile.signature, "w", 30_000)
    assert isinstance(second, Claimed) and second.attempt == 2
    assert queue.cancel("j", "revoked by Celery", attempt=first.attempt) == ("stale", "assigned")
    assert queue.client.hget(queue.keys.job("j"), "status") == "assigned"
    assert queue.cancel("j", "revoked by Celery", attempt=second.attempt)[0] == "cancelled"


def test_the_configured_retention_and_stream_caps_hold_on_every_step_of_a_job(
        queue: QueueFunctions) -> None:
    """Tried: retention 5 s, namespace stream capped at 4 events, a job's stream at 3, then a
    job submitted, claimed, started, given 5 progress updates and completed. The per-job
    functions read only these three settings (not the whole config); each must still apply
    them: the record and its stream expire within 5 s of the end (not the 7-day default),
    and neither stream holds more than its cap."""
    client = queue.client
    client.config_set("stream-node-max-entries", 1)  # '~' trimming then trims to the event
    queue.configure(retention_ms=5000, events_maxlen=4, job_events_maxlen=3)
    queue.register_worker(ANY)
    enqueue(queue, "kept-briefly")
    claimed = queue.claim(ANY.signature, ANY.worker_id, 60_000)
    assert isinstance(claimed, Claimed)
    assert queue.start("kept-briefly", claimed.attempt) == "ok"
    for pct in (10, 30, 50, 70, 90):
        assert queue.progress("kept-briefly", claimed.attempt, pct) == "ok"
    assert queue.complete("kept-briefly", claimed.attempt, {"ok": True}) == "ok"
    keys = queue.keys
    assert 0 < client.pttl(keys.job("kept-briefly")) <= 5000
    assert 0 < client.pttl(keys.job_events("kept-briefly")) <= 5000
    assert client.xlen(keys.job_events("kept-briefly")) <= 3
    assert client.xlen(keys.events) <= 4
    last = client.xrevrange(keys.job_events("kept-briefly"), count=1)[0][1]
    assert last["event"] == "complete_job"


def test_a_call_after_a_redis_restart_goes_through_on_a_new_connection(
        queue: QueueFunctions, redis_server) -> None:
    """Tried: a worker's progress report on its held connection (``functions._send``), then
    Redis restarted (SIGKILL; the append-only file keeps the job), then its next report.
    The held connection is dead (reset): the call must still go through, on a new
    connection, not fail the job. (A timeout on a hung server is not retried:
    ``tests/test_redis_hang.py``.)"""
    queue.register_worker(ANY)
    enqueue(queue, "across-a-restart")
    claimed = queue.claim(ANY.signature, ANY.worker_id, 60_000)
    assert isinstance(claimed, Claimed)
    assert queue.start("across-a-restart", claimed.attempt) == "ok"
    assert queue.progress("across-a-restart", claimed.attempt, 10) == "ok"
    redis_server.restart(kill=True)
    assert queue.progress("across-a-restart", claimed.attempt, 50) == "ok"
    assert queue.client.hget(queue.keys.job("across-a-restart"), "progress") == "50"
