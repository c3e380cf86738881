"""Release 26 (fewer Redis calls per job) behaves as release 25 did.

Each test runs a case the rewrite touched (the claim's attempt count, the family
head refresh, the fairness window read from the claim's first page, a class filed
without a family, the fields a completion removes) and asserts what release 25
did; each was run against release 25's library as well. The claim of a job whose
``attempts`` Redis cannot increment, which both releases lost (release 27 fails the
job and claims the next), is the exception.
"""

from __future__ import annotations

import pytest

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

T0 = 1_800_000_000_000


def gpu_worker(worker_id: str, gb: int) -> WorkerProfile:
    return WorkerProfile.from_dict({"worker_id": worker_id, "services": ["comfyui"],
                                    "hardware": {"gpu_memory_gb": gb}})


def gpu_job(gb: int, priority: int = 50, workflow: str | None = None) -> JobSpec:
    return JobSpec(service="comfyui", priority=priority, workflow_id=workflow,
                   requirements={"hardware": {"gpu_memory_gb": gb}})


def upscale_job(n: int, priority: int) -> JobSpec:
    """A job of a family of its own, of a service the GPU workers do not run."""
    return JobSpec(service="upscale", priority=priority, requirements={"scale": n})


def claim(queue: QueueFunctions, profile: WorkerProfile, now: int = T0 + 1_000) -> Claimed:
    claimed = queue.claim(profile.signature, profile.worker_id, 600_000, now_ms=now)
    assert isinstance(claimed, Claimed), f"{profile.worker_id} found nothing"
    return claimed


#: ``attempts`` values HINCRBY refuses: not Redis's form of an integer, or one it
#: cannot add 1 to (the largest 64-bit integer).
UNCOUNTABLE = ["007", "-0", "+1", "1.5", "abc", "", "9223372036854775807"]


def job_failed_events(queue: QueueFunctions, job_id: str) -> list[dict[str, str]]:
    return [fields for _, fields in queue.client.xrange(queue.keys.job_events(job_id))
            if fields.get("event") == "job_failed"]


@pytest.mark.parametrize("stored", UNCOUNTABLE)
def test_an_attempt_count_redis_cannot_increment_fails_the_job_not_the_claim(
        queue: QueueFunctions, stored: str) -> None:
    """Tried: a pending job whose record's ``attempts`` is not Redis's form of an
    integer, or one past which it cannot count. Releases 25 and 26 (HINCRBY, or 26's
    own count for the usual form) raised "not an integer" ("would overflow") AFTER the
    job had left its pending index: the record said pending, no index held it, no
    worker ever saw it again. Now the claim fails the job, ``last_error`` naming the
    field and the value, the count left as stored, and finds nothing else."""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("j", gpu_job(8), "{}", now_ms=T0)
    queue.client.hset(queue.keys.job("j"), "attempts", stored)
    assert not isinstance(queue.claim(worker.signature, "w", 600_000, now_ms=T0 + 1_000),
                          Claimed)
    record = queue.client.hgetall(queue.keys.job("j"))
    assert record["status"] == "failed" and record["attempts"] == stored
    assert f"attempts field holds {stored!r}" in record["last_error"]
    assert record["failed_at"] == str(T0 + 1_000)


def test_a_job_whose_count_cannot_be_incremented_is_failed_and_the_next_claimed(
        queue: QueueFunctions) -> None:
    """Tried: the best pending job's ``attempts`` is 'abc', a job of its class and one
    of another family wait behind it. Releases 25 and 26 raised from the claim with
    the bad job out of its class's pending set and family index but its record and
    status index saying pending (lost: claimable by nobody, shown pending for ever),
    and the worker got nothing. Now the same claim fails it (status index, job_failed
    event with the error, the gave-up list that stores Celery's FAILURE, the class's
    live count) and takes the next job; the one after follows in order."""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("bad", gpu_job(8), "{}", now_ms=T0)
    queue.enqueue("next", gpu_job(8), "{}", now_ms=T0 + 1)
    queue.enqueue("other", gpu_job(16), "{}", now_ms=T0 + 2)
    queue.client.hset(queue.keys.job("bad"), "attempts", "abc")
    csig = queue.client.hget(queue.keys.job("bad"), "class")
    fsig = queue.client.hget(queue.keys.class_family, csig)
    claimed = claim(queue, worker)
    assert (claimed.job_id, claimed.attempt) == ("next", 1)
    record = queue.client.hgetall(queue.keys.job("bad"))
    assert record["status"] == "failed" and record["attempts"] == "abc"
    prefix = queue.keys.prefix
    assert queue.client.zscore(prefix + "status:failed", "bad") == T0 + 1_000
    assert queue.client.zscore(prefix + "status:pending", "bad") is None
    assert queue.client.zscore(prefix + "pending:" + csig, "bad") is None
    assert queue.client.zscore(prefix + "fam-pending:" + fsig, "bad") is None
    assert queue.client.zscore(prefix + "leases", "bad") is None
    assert queue.client.ttl(queue.keys.job("bad")) > 0
    [failed] = job_failed_events(queue, "bad")
    assert "attempts field holds 'abc'" in failed["data"]
    assert queue.take_gave_up() == ["bad"]
    assert queue.client.hget(prefix + "live", csig) == "1"  # "next", leased
    assert claim(queue, worker).job_id == "other"
    assert queue.start("next", 1) == "ok" and queue.complete("next", 1, {}) == "ok"
    assert queue.client.hexists(queue.keys.classes, csig) is False


def test_a_claim_fails_at_most_32_uncountable_jobs_then_asks_again_at_once(
        queue: QueueFunctions) -> None:
    """Tried: 40 jobs with ``attempts`` 'abc' ahead of a good one. Releases 25 and 26
    raised on the first (and lost it). Now one claim fails 32 (bounding its time) and
    answers 1 ms, not an idle wait, with work left; the next fails the other 8 and
    takes the good job."""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    for n in range(40):
        queue.enqueue(f"bad-{n}", gpu_job(8), "{}", now_ms=T0 + n)
        queue.client.hset(queue.keys.job(f"bad-{n}"), "attempts", "abc")
    queue.enqueue("good", gpu_job(8), "{}", now_ms=T0 + 100)
    assert queue.claim(worker.signature, "w", 600_000, now_ms=T0 + 1_000) == 1
    assert len(queue.take_gave_up(count=100)) == 32
    assert claim(queue, worker).job_id == "good"
    assert len(queue.take_gave_up(count=100)) == 8


@pytest.mark.parametrize(("stored", "attempt"), [
    (None, 1), ("0", 1), ("-3", -2), ("999999999", 1_000_000_000),
    ("99999999999", 100_000_000_000)])
def test_the_claim_counts_the_attempt_from_what_the_record_holds(
        queue: QueueFunctions, stored: str | None, attempt: int) -> None:
    """Tried: ``attempts`` missing, zero, negative, of 9 digits (release 26 adds itself)
    and of 11 (release 26 leaves it to HINCRBY). The claim's attempt, the record's count
    and the start fenced by that attempt agree, as in release 25. (Passes on both.)"""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("j", gpu_job(8), "{}", now_ms=T0)
    if stored is None:
        queue.client.hdel(queue.keys.job("j"), "attempts")
    else:
        queue.client.hset(queue.keys.job("j"), "attempts", stored)
    claimed = claim(queue, worker)
    assert claimed.attempt == attempt
    assert queue.client.hget(queue.keys.job("j"), "attempts") == str(attempt)
    assert queue.start("j", attempt) == "ok"


def test_a_family_of_several_classes_is_claimed_in_job_order_with_ties(
        queue: QueueFunctions) -> None:
    """Tried: two workflows (two classes of one family) and a 16 GB family, jobs
    interleaved, some at the same effective time. Release 26 works out the family's
    head from the next class's score read with the best one; the claims still follow
    queue order across classes and families (ties by class). (Passes on both.)"""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    filed = [("a0", gpu_job(8, workflow="wa"), T0), ("b0", gpu_job(8, workflow="wb"), T0),
             ("c0", gpu_job(16), T0 + 1), ("b1", gpu_job(8, workflow="wb"), T0 + 2),
             ("a1", gpu_job(8, workflow="wa"), T0 + 3), ("c1", gpu_job(16), T0 + 3),
             ("a2", gpu_job(8, workflow="wa"), T0 + 5)]
    for job_id, spec, at in filed:
        queue.enqueue(job_id, spec, "{}", now_ms=at)
    order = [claim(queue, worker).job_id for _ in filed]
    assert order[2:] == ["c0", "b1", "a1", "c1", "a2"] or order[2:] == [
        "c0", "b1", "c1", "a1", "a2"]
    assert sorted(order[:2]) == ["a0", "b0"]
    assert not isinstance(queue.claim(worker.signature, "w", 600_000, now_ms=T0 + 1_000),
                          Claimed)


def page_of_families(queue: QueueFunctions, in_window: int, last_priority: int) -> None:
    """Families in fheads order: 5 upscale at priority 70 (before the GPU worker's
    best), small-0 (priority 60), ``in_window`` upscale at 60, then one upscale at
    ``last_priority``."""
    queue.register_worker(WorkerProfile.from_dict({"worker_id": "up",
                                                   "services": ["upscale"]}))
    for n in range(5):
        queue.enqueue(f"up-high-{n}", upscale_job(1_000 + n, 70), "{}", now_ms=T0 - 10 + n)
    queue.enqueue("small-0", gpu_job(8, 60), "{}", now_ms=T0)
    for n in range(in_window):
        queue.enqueue(f"up-{n}", upscale_job(n, 60), "{}", now_ms=T0 + 1 + n)
    queue.enqueue("up-last", upscale_job(5_000, last_priority), "{}", now_ms=T0 + 90)


def test_the_scarce_family_on_the_claims_first_page_is_found(queue: QueueFunctions) -> None:
    """Tried: 64 families on the first page, the first 5 before the big worker's best
    (small-0), the scarce big-1 (priority 55) 63rd, the 64th past the window (priority
    40). Release 26 takes the window from the page it read (it ends within it); the big
    worker takes big-1 first, as in release 25. (Passes on both.)"""
    big = gpu_worker("big", 80)
    queue.register_worker(gpu_worker("s1", 8))
    queue.register_worker(big)
    page_of_families(queue, 56, 40)
    queue.enqueue("big-1", gpu_job(48, 55), "{}", now_ms=T0 + 100)
    csig = queue.client.hget(queue.keys.job("big-1"), "class")
    fsig = queue.client.hget(queue.keys.class_family, csig)
    assert queue.client.zrank(queue.keys.prefix + "fheads", fsig) == 62
    assert [claim(queue, big).job_id for _ in range(2)] == ["big-1", "small-0"]


def test_the_scarce_family_after_a_full_first_page_is_found(queue: QueueFunctions) -> None:
    """Tried: 64 families on the first page, the first 5 before the big worker's best,
    all the others in the window; the scarce big-1 is the 66th. Release 25's window read
    (from the best's score, 64 at a time) holds it in its first page, the claim's page
    does not: release 26 reads the window again. (Passes on both.)"""
    big = gpu_worker("big", 80)
    queue.register_worker(gpu_worker("s1", 8))
    queue.register_worker(big)
    page_of_families(queue, 58, 60)
    queue.enqueue("big-1", gpu_job(48, 55), "{}", now_ms=T0 + 100)
    assert [claim(queue, big).job_id for _ in range(2)] == ["big-1", "small-0"]


def test_a_class_that_lost_its_family_entry_files_its_jobs_without_one(
        queue: QueueFunctions) -> None:
    """Tried: a known class whose P.."class-family" entry is missing (as a class filed
    before families existed), then another job of it. Release 26's ensure_class finds no
    entry and returns none; the job is filed under its class alone (the family summary
    lists the class apart from its family), as in release 25. (Passes on both.)
    Then, with jobs of another family between and after them, both are claimed in
    queue order: j1, filed under the class alone, is reached through the family the
    claim of j0 left its class in (checked for the rolling upgrade: passes on 26)."""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("j0", gpu_job(8, workflow="wf"), "{}", now_ms=T0)
    csig = queue.client.hget(queue.keys.job("j0"), "class")
    family_key = queue.keys.class_family
    fsig = queue.client.hget(family_key, csig)
    queue.family_summary()  # (marks the pool's pending index built)
    queue.client.hdel(family_key, csig)
    queue.enqueue("j1", gpu_job(8, workflow="wf"), "{}", now_ms=T0 + 2)
    pending = {f.family: f.pending for f in queue.family_summary()}
    assert csig != fsig and pending == {fsig: 1, csig: 1}
    queue.enqueue("o0", gpu_job(16), "{}", now_ms=T0 + 1)
    queue.enqueue("o1", gpu_job(16), "{}", now_ms=T0 + 3)
    assert [claim(queue, worker).job_id for _ in range(4)] == ["j0", "o0", "j1", "o1"]
    assert not isinstance(queue.claim(worker.signature, "w", 600_000, now_ms=T0 + 1_000),
                          Claimed)


def test_a_job_filed_without_its_family_entry_leaves_the_family_summary_when_claimed(
        queue: QueueFunctions) -> None:
    """Tried: a known class whose class-family entry is missing, a job filed under the
    class alone (its family index is keyed by the class), then claimed. Releases 25
    and 26 took it out of the index of the family the claim found it through, where
    it was not: the family summary (the monitor's Queue page) counted it pending while
    it ran, until its class ended."""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("j0", gpu_job(8, workflow="wf"), "{}", now_ms=T0)
    csig = queue.client.hget(queue.keys.job("j0"), "class")
    queue.family_summary()  # (marks the pool's pending index built)
    queue.client.hdel(queue.keys.class_family, csig)
    queue.enqueue("j1", gpu_job(8, workflow="wf"), "{}", now_ms=T0 + 1)
    assert [claim(queue, worker).job_id for _ in range(2)] == ["j0", "j1"]
    assert {f.family: f.pending for f in queue.family_summary()} == {}
    assert queue.client.zcard(queue.keys.prefix + "fam-pending:" + csig) == 0


@pytest.mark.parametrize("ending", ["complete", "fail"])
@pytest.mark.parametrize("cold", [False, True])
def test_an_ended_job_keeps_no_cold_start_and_a_completed_one_no_error(
        queue: QueueFunctions, ending: str, cold: bool) -> None:
    """Tried: a job that failed once (retried, ``last_error`` set), claimed again, with
    or without a cold start reported (``preparing``), then completed or failed. Release
    26 removes only the fields it read as there; the record ends as in release 25: no
    ``preparing``, ``last_error`` only on a failure, the class gone with its last job.
    (Passes on both.)"""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("j", gpu_job(8), "{}", now_ms=T0)
    first = claim(queue, worker)
    assert queue.start("j", first.attempt) == "ok"
    assert queue.retry("j", first.attempt, 0, "{}", "boom") in ("queued", "delayed")
    again = claim(queue, worker, now=T0 + 100_000)
    if cold:
        assert queue.preparing("j", again.attempt, {"stage": "loading"}) == "ok"
    if ending == "complete":
        assert queue.complete("j", again.attempt, {"ok": 1}) == "ok"
    else:
        assert queue.fail("j", again.attempt, "bang") == "ok"
    record = queue.client.hgetall(queue.keys.job("j"))
    assert "preparing" not in record
    assert record.get("last_error") == (None if ending == "complete" else "bang")
    assert record["status"] == ("completed" if ending == "complete" else "failed")
    assert queue.client.hlen(queue.keys.classes) == 0


def test_a_count_past_what_a_lua_number_holds_is_kept_as_redis_counted_it(
        queue: QueueFunctions) -> None:
    """Tried: ``attempts`` of 4611686018427387905 (past 2^53: a Lua number rounds it).
    Release 25's HINCRBY left 4611686018427387906 in the record; release 26 then wrote
    the count again from the rounded Lua number, 4611686018427387904."""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("j", gpu_job(8), "{}", now_ms=T0)
    queue.client.hset(queue.keys.job("j"), "attempts", "4611686018427387905")
    claim(queue, worker)
    assert queue.client.hget(queue.keys.job("j"), "attempts") == "4611686018427387906"


def test_the_claims_second_pick_after_housekeeping_keeps_the_family_head(
        queue: QueueFunctions) -> None:
    """Tried: two classes of one family (two workflows) with a job each waiting for its
    due time, a claim that finds nothing (and housekeeps), then, within 100 ms, one
    that finds the jobs due: it files them itself and picks again (emp_claim's second
    pick, whose next class's score refreshes the family's head). The next claim takes
    the other class's job, as in release 25. (Passes on both.)"""
    worker = gpu_worker("w", 24)
    queue.register_worker(worker)
    queue.enqueue("a", gpu_job(8, workflow="wa"), "{}", due_ms=T0 + 995, now_ms=T0)
    queue.enqueue("b", gpu_job(8, workflow="wb"), "{}", due_ms=T0 + 995, now_ms=T0 + 1)
    assert not isinstance(queue.claim(worker.signature, "w", 600_000, now_ms=T0 + 990),
                          Claimed)
    assert claim(queue, worker, now=T0 + 1_000).job_id == "a"
    assert claim(queue, worker, now=T0 + 1_001).job_id == "b"
