"""Queue library release 28: what release 27 left of classes without a family entry,
and the pool metrics of jobs the queue fails on its own.

A class filed before families existed, or whose ``class-family`` entry was lost, has
no entry; its jobs are filed under the class alone, those filed before the entry
went stay under the family. The old states are made by hand-editing the keys of a
real Redis to what an older release left, as release 27's tests do
(``test_release26_same_behaviour.py``). Each test was run against release 27's
library and failed there, except where its docstring says otherwise.
"""

from __future__ import annotations

import pytest
import redis

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.pool_metrics import pool_series
from capability_router.profile import WorkerProfile
from tests.capability_router.test_class_lifecycle import index_size

T0 = 1_800_000_000_000
LEASE = 600_000


def gpu_worker(worker_id: str = "w", gb: int = 24, **fields: object) -> WorkerProfile:
    return WorkerProfile.from_dict({"worker_id": worker_id, "services": ["comfyui"],
                                    "hardware": {"gpu_memory_gb": gb}, **fields})


def gpu_job(gb: int = 8, workflow: str | None = None, customer: str | None = None,
            strict: bool = False) -> JobSpec:
    requirements: dict[str, object] = {"hardware": {"gpu_memory_gb": gb}}
    if strict:
        requirements["customer_isolation"] = "strict"
    return JobSpec(service="comfyui", workflow_id=workflow, customer_id=customer,
                   requirements=requirements)


def claim(queue: QueueFunctions, profile: WorkerProfile, now: int = T0 + 1_000) -> Claimed:
    claimed = queue.claim(profile.signature, profile.worker_id, LEASE, now_ms=now)
    assert isinstance(claimed, Claimed), f"{profile.worker_id} found nothing"
    return claimed


def finds_nothing(queue: QueueFunctions, profile: WorkerProfile) -> bool:
    got = queue.claim(profile.signature, profile.worker_id, LEASE, now_ms=T0 + 2_000)
    return not isinstance(got, Claimed)


def lose_family_entry(queue: QueueFunctions, job_id: str) -> tuple[str, str]:
    """Deletes the ``class-family`` entry of ``job_id``'s class (as a class filed before
    families, or one whose entry was lost); (class, family) signatures."""
    client = queue.client
    csig = client.hget(queue.keys.job(job_id), "class")
    fsig = client.hget(queue.keys.class_family, csig)
    assert fsig
    queue.family_summary()  # (marks the pool's pending index built)
    client.hdel(queue.keys.class_family, csig)
    return csig, fsig


def end(queue: QueueFunctions, worker: WorkerProfile, job_id: str, how: str) -> None:
    """Ends ``job_id``: completed or failed by its run, or cancelled while pending."""
    if how == "cancel":
        assert queue.cancel(job_id)[0] == "cancelled"
        return
    claimed = claim(queue, worker)
    assert claimed.job_id == job_id
    if how == "complete":
        assert queue.complete(job_id, claimed.attempt, {}) == "ok"
    else:
        assert queue.fail(job_id, claimed.attempt, "boom") == "ok"


@pytest.mark.parametrize("how", ["complete", "fail", "cancel"])
@pytest.mark.parametrize("customer", [None, "c1", "strict"])
def test_a_class_without_its_family_entry_lets_its_family_go_when_it_ends(
        queue: QueueFunctions, how: str, customer: str | None) -> None:
    """Tried: a job of a workflow's class (with no customer, a loose one, cut from the
    family like the workflow, or a strict one, kept in it), its class's
    ``class-family`` entry deleted, then the job completed, failed or cancelled.
    Release 27 dropped the class but never lowered its family's class count: the
    family, its worker's compatibility entry and (cancelled) its claim index stayed
    for ever. Now the claim index returns to what the registered worker alone needs."""
    worker = gpu_worker(customer_access={"isolation": "strict", "allowed_customers": ["c1"]})
    queue.register_worker(worker)
    baseline = index_size(queue.client)
    spec = gpu_job(workflow="wf", customer=customer and "c1", strict=customer == "strict")
    queue.enqueue("j", spec, "{}", now_ms=T0)
    lose_family_entry(queue, "j")
    end(queue, worker, "j", how)
    assert index_size(queue.client) == baseline


def test_a_class_without_its_entry_lowers_its_familys_count_once(
        queue: QueueFunctions) -> None:
    """Tried: two classes of one family (workflows wa and wb), wa's entry deleted, wa's
    job completed, then wb's job claimed and completed. Release 27 left the family
    counting 2 classes after wa ended, and 1 (for ever) after wb. Now wa's end lowers
    the count once (to 1: the family stays while wb lives and its job is claimed), and
    wb's end lets the family go."""
    worker = gpu_worker()
    queue.register_worker(worker)
    baseline = index_size(queue.client)
    queue.enqueue("a", gpu_job(workflow="wa"), "{}", now_ms=T0)
    queue.enqueue("b", gpu_job(workflow="wb"), "{}", now_ms=T0 + 1)
    _, fsig = lose_family_entry(queue, "a")
    counts = queue.keys.prefix + "family-classes"
    end(queue, worker, "a", "complete")
    assert queue.client.hget(counts, fsig) == "1"
    end(queue, worker, "b", "complete")
    assert queue.client.hget(counts, fsig) is None
    assert index_size(queue.client) == baseline


def test_a_class_its_family_never_counted_leaves_the_count_alone(
        queue: QueueFunctions) -> None:
    """Tried: a class filed before families (no entry, and not counted in its family:
    the count lowered by hand) ends while another class of the family waits. Its end
    must not lower the other class's count: at 0 the family and its compatibility
    entries would go and the waiting job could not be claimed. (Passes on release 27,
    which lowers nothing; fails with release 28's check of the count removed.)"""
    worker = gpu_worker()
    queue.register_worker(worker)
    queue.enqueue("old", gpu_job(workflow="wa"), "{}", now_ms=T0)
    _, fsig = lose_family_entry(queue, "old")
    queue.client.hincrby(queue.keys.prefix + "family-classes", fsig, -1)
    queue.enqueue("new", gpu_job(workflow="wb"), "{}", now_ms=T0 + 1)
    end(queue, worker, "old", "complete")
    assert queue.client.hget(queue.keys.prefix + "family-classes", fsig) == "1"
    assert claim(queue, worker).job_id == "new"


def test_a_cancelled_job_filed_under_its_family_leaves_it_after_the_entry_went(
        queue: QueueFunctions) -> None:
    """Tried: a job filed under its family, its class's entry then deleted, the job
    cancelled, and a job of another family waiting behind it. Release 27 took it out of
    its class's pending set but not out of the family's index nor the class out of the
    family's claim index: the family summary counted it pending, and every claim that
    reached the family raised ("Lua redis lib command arguments must be strings or
    integers": the class had no job to pop), so the worker got nothing at all. Now the
    summary lists only the other family and the worker takes its job."""
    worker = gpu_worker()
    queue.register_worker(worker)
    queue.enqueue("j0", gpu_job(workflow="wf"), "{}", now_ms=T0)
    queue.enqueue("other", gpu_job(16), "{}", now_ms=T0 + 1)
    other_family = queue.client.hget(queue.keys.job("other"), "class")
    _, fsig = lose_family_entry(queue, "j0")
    assert queue.cancel("j0")[0] == "cancelled"
    assert {f.family: f.pending for f in queue.family_summary()} == {other_family: 1}
    assert queue.client.zscore(queue.keys.prefix + "fam-pending:" + fsig, "j0") is None
    assert claim(queue, worker).job_id == "other"
    assert finds_nothing(queue, worker)


def test_cancel_finds_each_job_where_it_was_filed(queue: QueueFunctions) -> None:
    """Tried: j0 filed under its family, the class's entry deleted, j1 filed under the
    class alone (as release 27 files it), then j0 cancelled. Release 27 left j0 in the
    family's index (the summary counted 2 pending, one of them cancelled). Now only j1
    is counted, under its class, and j1 is still claimed through the family."""
    worker = gpu_worker()
    queue.register_worker(worker)
    queue.enqueue("j0", gpu_job(workflow="wf"), "{}", now_ms=T0)
    csig, _ = lose_family_entry(queue, "j0")
    queue.enqueue("j1", gpu_job(workflow="wf"), "{}", now_ms=T0 + 1)
    assert queue.cancel("j0")[0] == "cancelled"
    assert {f.family: f.pending for f in queue.family_summary()} == {csig: 1}
    assert claim(queue, worker).job_id == "j1"
    assert queue.family_summary() == []
    assert finds_nothing(queue, worker)


def failed_this_hour(client: redis.Redis, now: int) -> int:
    return pool_series(client, "default", "1h", now_ms=now)["totals"]["failed"]


def test_a_job_failed_for_an_uncountable_attempt_count_counts_as_failed(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """Tried: a pending job whose ``attempts`` is 'abc', failed by the claim that
    reaches it (release 27's path). Release 27 counted nothing in the pool's minute:
    the pool metrics (``/api/pools/<name>/metrics``, Prometheus) showed no failure.
    Now it counts one failed, as emp_fail does."""
    worker = gpu_worker()
    queue.register_worker(worker)
    queue.enqueue("j", gpu_job(), "{}", now_ms=T0)
    client.hset(queue.keys.job("j"), "attempts", "abc")
    assert finds_nothing(queue, worker)
    assert client.hget(queue.keys.job("j"), "status") == "failed"
    assert failed_this_hour(client, T0 + 2_000) == 1


def test_a_job_whose_attempts_ran_out_counts_as_failed(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """Tried: max_attempts 1, a claimed job's lease expired, and the next claim's
    housekeeping fails it (the queue gave up: the gave-up list, as for the uncountable
    count). Release 27 did not count it either (its minute had the claim, no failure).
    Now it counts one failed."""
    worker = gpu_worker()
    queue.register_worker(worker)
    client.hset(queue.keys.config, "max_attempts", "1")
    queue.enqueue("j", gpu_job(), "{}", now_ms=T0)
    queue.claim(worker.signature, "w", 1_000, now_ms=T0 + 1_000)
    assert finds_nothing(queue, worker)  # at T0 + 2 s: the lease ended at T0 + 2 s
    assert client.hget(queue.keys.job("j"), "status") == "failed"
    assert queue.take_gave_up() == ["j"]
    assert failed_this_hour(client, T0 + 2_000) == 1


def test_a_claim_passes_a_class_left_in_its_familys_index_without_a_job(
        queue: QueueFunctions) -> None:
    """Tried: the state release 27's cancel left (previous test) made by hand: a class
    of a workflow in its family's claim index and the family in ``fheads``, its
    pending set empty, a job of another family waiting. Release 27's claims all raised
    there ("Lua redis lib command arguments must be strings or integers"), release 28's
    cancel no longer leaves it, but a pool upgraded from 27 may hold it. Now the claim
    takes the class out of the family's index (the family out of ``fheads``) and
    claims the other job."""
    worker = gpu_worker()
    queue.register_worker(worker)
    queue.enqueue("j0", gpu_job(workflow="wf"), "{}", now_ms=T0)
    queue.enqueue("other", gpu_job(16), "{}", now_ms=T0 + 1)
    csig, fsig = lose_family_entry(queue, "j0")
    prefix = queue.keys.prefix
    queue.client.zrem(prefix + "pending:" + csig, "j0")
    queue.client.zrem(prefix + "heads", csig)
    assert queue.client.zscore(prefix + "fam:" + fsig, csig) is not None
    assert claim(queue, worker).job_id == "other"
    assert queue.client.exists(prefix + "fam:" + fsig) == 0
    assert queue.client.zscore(prefix + "fheads", fsig) is None
    assert finds_nothing(queue, worker)
