"""The claim index at production shape: families, restricted workers, and nothing kept for ever.

A requirement class names its workflow and customer, so every workflow is its
own class. The claim index groups classes into families (what matching reads)
so a worker's claim walks the kinds of work it serves, and classes, families,
compatibility entries and profiles go away once nothing uses them.
"""

from __future__ import annotations

import json
import time

import redis

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

#: Keys of the claim index a drained, forgotten queue must not keep.
INDEX_PATTERNS = ("classes", "class-family", "families", "family-classes", "live",
                  "wf-classes:*", "compat:*", "compat-rev:*", "fam:*", "fheads", "heads",
                  "profiles", "restricted", "service-profiles:*", "profile-seen", "pending:*",
                  "fam-pending:*", "unfamilied")


def index_size(client: redis.Redis) -> dict[str, int]:
    """Entries of every claim-index key of the default pool, by key pattern."""
    sizes: dict[str, int] = {}
    for pattern in INDEX_PATTERNS:
        total = 0
        for key in client.scan_iter(f"emp:{{default}}:{pattern}"):
            kind = client.type(key)
            total += {"hash": client.hlen, "set": client.scard,
                      "zset": client.zcard}[kind](key)
        sizes[pattern] = total
    return sizes


def worker(worker_id: str = "w", **fields: object) -> WorkerProfile:
    fields.setdefault("hardware", {"gpu_memory_gb": 24})
    return WorkerProfile.from_dict({"worker_id": worker_id, "services": ["comfyui"], **fields})


def job(workflow: str | None = None, customer: str | None = None, gpu: int = 8,
        priority: int = 50) -> JobSpec:
    return JobSpec(service="comfyui", workflow_id=workflow, customer_id=customer,
                   priority=priority, requirements={"hardware": {"gpu_memory_gb": gpu}})


def claim(queue: QueueFunctions, profile: WorkerProfile, now: int | None = None) -> Claimed:
    claimed = queue.claim(profile.signature, profile.worker_id, 30_000, now_ms=now)
    assert isinstance(claimed, Claimed), f"{profile.worker_id} found nothing"
    return claimed


def test_a_thousand_workflows_share_one_family(queue: QueueFunctions) -> None:
    """Tried: 1,000 workflows of 100 customers waiting, all asking 8 GB. Before, each
    workflow was a class of its own in every worker's compatibility set (1,000 entries
    a claim could walk); now the worker serves one family and claims in job order."""
    client = queue.client
    big = worker("big", hardware={"gpu_memory_gb": 24})
    queue.register_worker(big)
    for n in range(1000):
        queue.enqueue(f"j{n}", job(f"wf-{n}", f"c-{n % 100}"), "{}", now_ms=1_000_000 + n)
    assert client.scard(queue.keys.compat(big.signature)) == 1
    assert client.hlen(queue.keys.classes) == 1000
    assert [claim(queue, big).job_id for _ in range(3)] == ["j0", "j1", "j2"]


def test_classes_families_and_compat_entries_go_when_their_jobs_end(
        queue: QueueFunctions) -> None:
    """Tried: 200 workflows submitted, then completed, failed, cancelled while pending
    and cancelled while waiting for a retry. Before, every class and compatibility entry
    stayed for ever; now the index returns to what the registered worker alone needs."""
    client = queue.client
    w = worker("w1", hardware={"gpu_memory_gb": 24})
    queue.register_worker(w)
    baseline = index_size(client)
    for n in range(200):
        queue.enqueue(f"j{n}", job(f"wf-{n}", f"c-{n % 7}", gpu=8 + n % 3), "{}")
    assert index_size(client)["classes"] == 200
    ended = 0
    for n in range(0, 200, 4):  # a quarter cancelled while pending
        assert queue.cancel(f"j{n}")[0] == "cancelled"
        ended += 1
    while ended < 200:
        claimed = claim(queue, w)
        n = int(claimed.job_id[1:])
        if n % 4 == 1:
            assert queue.complete(claimed.job_id, claimed.attempt, {"ok": True}) == "ok"
        elif n % 4 == 2:
            assert queue.fail(claimed.job_id, claimed.attempt, "boom") == "ok"
        else:  # waits for its retry, then is cancelled there
            due = int(time.time() * 1000) + 60_000
            assert queue.retry(claimed.job_id, claimed.attempt, due, "{}") in ("delayed", "ok")
            assert queue.cancel(claimed.job_id)[0] == "cancelled"
        ended += 1
    assert index_size(client) == baseline


def test_a_resubmitted_job_whose_class_was_dropped_runs_again(queue: QueueFunctions) -> None:
    """Tried: a failed job resubmitted after its class (its only job) was dropped."""
    w = worker()
    queue.register_worker(w)
    queue.enqueue("once", job("wf-x", "c-1"), "{}")
    claimed = claim(queue, w)
    queue.fail(claimed.job_id, claimed.attempt, "boom")
    assert queue.client.hlen(queue.keys.classes) == 0
    assert queue.resubmit("once") == "pending"
    assert claim(queue, w).job_id == "once"


def test_profiles_no_worker_used_are_dropped_and_come_back_on_registration(
        queue: QueueFunctions) -> None:
    """Tried: a worker that stopped claiming for longer than the profile retention, while
    another kept claiming. Its profile and compatibility set go; it registers again (as
    the transport does on NOPROFILE) and serves as before."""
    client = queue.client
    queue.configure(profile_retention_ms=60_000)
    gone, kept = worker("gone", region="eu"), worker("kept", region="us")
    t0 = int(time.time() * 1000)
    for profile in (gone, kept):
        queue.register_worker(profile)
    queue.enqueue("eu-1", JobSpec(service="comfyui", requirements={"region": "eu"}), "{}",
                  now_ms=t0)
    queue.claim(kept.signature, "kept", 30_000, now_ms=t0 + 50_000)
    queue.sweep(now_ms=t0 + 90_000)
    assert not client.hexists(queue.keys.profiles, gone.signature)
    assert not client.exists(queue.keys.compat(gone.signature))
    assert client.hexists(queue.keys.profiles, kept.signature)
    try:
        queue.claim(gone.signature, "gone", 30_000, now_ms=t0 + 91_000)
        raise AssertionError("a dropped profile claimed")
    except redis.ResponseError as exc:
        assert "NOPROFILE" in str(exc)
    assert queue.register_worker(gone) == 1
    assert claim(queue, gone, now=t0 + 92_000).job_id == "eu-1"


def test_a_worker_denying_customers_takes_the_best_job_it_may(queue: QueueFunctions) -> None:
    """Tried: the denied customer's jobs first in line, in two families, and the allowed
    jobs behind them in both. The worker skips the denied and takes the allowed jobs in
    the queue's order (priority, then time), across families."""
    picky = worker("picky", hardware={"gpu_memory_gb": 24},
                   customer_access={"denied_customers": ["evil"]})
    queue.register_worker(picky)
    at = 1_000_000
    for n in range(100):
        queue.enqueue(f"evil-{n}", job(f"wf-e{n}", "evil", gpu=8 + n % 2), "{}", now_ms=at + n)
    queue.enqueue("good-16", job("wf-g1", "good", gpu=16), "{}", now_ms=at + 200)
    queue.enqueue("good-8", job("wf-g2", "good", gpu=8), "{}", now_ms=at + 300)
    queue.enqueue("good-9-urgent", job("wf-g3", "nice", gpu=9, priority=90), "{}",
                  now_ms=at + 400)
    order = [claim(queue, picky).job_id for _ in range(3)]
    assert order == ["good-9-urgent", "good-16", "good-8"]
    assert queue.claim(picky.signature, "picky", 30_000) > -1  # nothing left for it


def test_a_workflow_restricted_worker_takes_only_its_workflow_in_order(
        queue: QueueFunctions) -> None:
    """Tried: 300 other workflows waiting ahead, its own workflow's steps in two families."""
    dedicated = worker("dedicated", hardware={"gpu_memory_gb": 24}, workflow_id="wf-mine")
    anyone = worker("anyone", hardware={"gpu_memory_gb": 24})
    for profile in (dedicated, anyone):
        queue.register_worker(profile)
    at = 1_000_000
    for n in range(300):
        queue.enqueue(f"other-{n}", job(f"wf-{n}", "c"), "{}", now_ms=at + n)
    queue.enqueue("mine-2", job("wf-mine", "c", gpu=16), "{}", now_ms=at + 600)
    queue.enqueue("mine-1", job("wf-mine", "c", gpu=8), "{}", now_ms=at + 500)
    assert [claim(queue, dedicated).job_id for _ in range(2)] == ["mine-1", "mine-2"]
    assert not isinstance(queue.claim(dedicated.signature, "dedicated", 30_000), Claimed)
    assert claim(queue, anyone).job_id == "other-0"


def test_an_idle_restricted_worker_is_not_woken_for_a_job_it_may_not_take(
        queue: QueueFunctions) -> None:
    """Tried: two idle workers of one family, the more recently idle one denying the
    job's customer. The job's enqueue wakes the other one."""
    client = queue.client
    picky = worker("picky", customer_access={"denied_customers": ["evil"]})
    plain = worker("plain")
    for profile in (plain, picky):  # picky idles last, so it is asked first
        queue.register_worker(profile)
        assert not isinstance(queue.claim(profile.signature, profile.worker_id, 30_000),
                              Claimed)
    queue.enqueue("e1", job("wf-1", "evil"), json.dumps({}))
    assert client.llen(queue.keys.wake("plain")) == 1
    assert client.llen(queue.keys.wake("picky")) == 0
