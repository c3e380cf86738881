"""Every way the queue ends a job ``failed`` counts one failure in the pool's minute.

The paths (``lua/emp.lua``, all through ``fail_job``): a run's failure (``emp_fail``),
an acknowledgement of an attempt that recorded no outcome (``emp_ack``, or the acks a
claim carries), attempts used up (``emp_requeue``, or an expired lease found by a
claim's housekeeping or ``emp_sweep``), and an ``attempts`` count Redis cannot
increment (the claim that reaches it). Times are explicit, so each figure is known by
hand: claimed at +1 s, failed at +5 s.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.pool_metrics import pool_series
from capability_router.profile import WorkerProfile

T0 = 1_800_000_000_000
LEASE = 4_000  # a lease taken at +1 s ends at +5 s
KEYS = Keys("default")
PROFILE = WorkerProfile.from_dict({"worker_id": "w1", "services": ["simulation"]})


def claim(queue: QueueFunctions, now: int, acks: list[str] | None = None) -> Claimed | int:
    """A claim of w1 at ``now``, carrying ``acks`` (job id, attempt pairs) as a worker's do."""
    function, keys, args = queue.claim_call(PROFILE.signature, "w1", LEASE, now_ms=now)
    return queue.client.fcall(function, len(keys), *keys, *args, *(acks or []))


def by_emp_fail(queue: QueueFunctions, attempt: int) -> None:
    assert queue.client.fcall("emp_fail", 2, KEYS.config, KEYS.job("j"), "j", attempt,
                              "boom", T0 + 5_000) == "ok"


def by_ack(queue: QueueFunctions, attempt: int) -> None:
    assert queue.ack([("j", attempt)], now_ms=T0 + 5_000) == 1


def by_ack_on_a_claim(queue: QueueFunctions, attempt: int) -> None:
    claim(queue, T0 + 5_000, ["j", str(attempt)])


def by_requeue(queue: QueueFunctions, attempt: int) -> None:
    assert queue.client.fcall("emp_requeue", 2, KEYS.config, KEYS.job("j"), "j", attempt,
                              "rejected by the worker", T0 + 5_000) == "failed"


def by_lease_expiry_on_a_claim(queue: QueueFunctions, attempt: int) -> None:
    claim(queue, T0 + 5_000)


def by_sweep(queue: QueueFunctions, attempt: int) -> None:
    queue.sweep(now_ms=T0 + 5_000)


PATHS: dict[str, tuple[Callable[[QueueFunctions, int], None], str]] = {
    "emp_fail": (by_emp_fail, "boom"),
    "emp_ack": (by_ack, "without recording an outcome"),
    "ack on a claim": (by_ack_on_a_claim, "without recording an outcome"),
    "emp_requeue, attempts used up": (by_requeue, "gave up after 1 attempts"),
    "expired lease, claim": (by_lease_expiry_on_a_claim, "gave up after 1 attempts"),
    "expired lease, emp_sweep": (by_sweep, "gave up after 1 attempts"),
}


def setup(client: redis.Redis, queue: QueueFunctions) -> None:
    queue.register_worker(PROFILE)
    client.zadd(KEYS.workers, {"w1": T0 + 3_600_000})  # live for the whole test
    client.hset(KEYS.config, "max_attempts", "1")
    queue.enqueue("j", JobSpec(service="simulation"), "{}", now_ms=T0)


@pytest.mark.parametrize("path", PATHS)
def test_a_running_job_failed_counts_one_failure(
        client: redis.Redis, queue: QueueFunctions, path: str) -> None:
    """Tried: a job claimed at +1 s, started, and failed at +5 s by each path, then an
    idle claim at +30 s. Before (library release 28) both acknowledgement paths counted 0
    failed (the record said failed; ``/api/pools/<name>/metrics`` did not), and
    ``emp_ack`` also left the pool's running count at 1: the minute read 29 busy
    worker-seconds, not 4 (the job busy until the next gauge sample). The others
    counted 1 failure and 4 s."""
    setup(client, queue)
    got = claim(queue, T0 + 1_000)
    assert isinstance(got, list) and got[0] == 1, got
    attempt = int(got[2])
    assert queue.start("j", attempt, now_ms=T0 + 1_000) == "ok"
    fail, error = PATHS[path]
    fail(queue, attempt)
    record = client.hmget(KEYS.job("j"), "status", "last_error")
    assert record[0] == "failed" and error in record[1], record
    totals = pool_series(client, "default", "1h", now_ms=T0 + 30_000)["totals"]
    assert (totals["claims"], totals["failed"], totals["throughput"]) == (1, 1, 0), totals
    assert totals["wait_mean_seconds"] == 1.0 and totals["run_mean_seconds"] is None, totals
    assert client.hget(KEYS.obs, "busy") == "0"
    claim(queue, T0 + 30_000)  # a later observation (a tick) adds no busy time for it
    totals = pool_series(client, "default", "1h", now_ms=T0 + 30_000)["totals"]
    assert totals["busy_worker_seconds"] == 4.0 and totals["failed"] == 1, totals


def test_a_pending_job_failed_by_its_claim_counts_one_failure(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """Tried: a pending job whose ``attempts`` is 'abc', failed by the claim that reaches
    it (counted since release 28): one failure, no claim, no busy time."""
    setup(client, queue)
    client.hset(KEYS.job("j"), "attempts", "abc")
    claim(queue, T0 + 1_000)
    assert client.hget(KEYS.job("j"), "status") == "failed"
    totals = pool_series(client, "default", "1h", now_ms=T0 + 30_000)["totals"]
    assert (totals["claims"], totals["failed"], totals["busy_worker_seconds"]) == (0, 1, 0.0)
