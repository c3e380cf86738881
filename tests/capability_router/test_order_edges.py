"""Edges of the queue order (README, Matching: highest effective priority, then oldest
effective time) against a real Redis."""

from __future__ import annotations

import json
import time

import pytest

from capability_router.errors import InvalidJob
from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

ANY = WorkerProfile(worker_id="any", services=["comfyui"])


def claim_order(queue: QueueFunctions) -> list[str]:
    queue.register_worker(ANY)
    order = []
    while isinstance(c := queue.claim(ANY.signature, "any", 60_000), Claimed):
        order.append(c.job_id)
    return order


@pytest.mark.parametrize(
    "stamp",
    [
        time.time_ns() // 1000,  # microseconds (a 16-digit number, read as ms: year 57000)
        time.time_ns(),  # nanoseconds (beyond 2**53: the order score loses its ms)
        "2400-01-01T00:00:00Z",  # past the year 2286, where ms reach 1e13
        -86_400_000,  # before 1970
    ],
    ids=["microseconds", "nanoseconds", "year-2400", "before-1970"],  # stable for pytest-xdist
)
def test_a_workflow_datetime_the_order_cannot_hold_is_refused(
    queue: QueueFunctions, stamp: object
) -> None:
    """Tried: a priority-90 job with each of these workflow_datetime values. The order
    score is (100 - priority) * 1e13 + ms, so a time of 1e13 ms or more spills into lower
    priority bands. Before the fix all were accepted: with a microsecond stamp (Python's
    time.time_ns() // 1000, read as ms) or a nanosecond one the priority-90 job was
    claimed after a priority-10 job submitted with it; one from the year 2400 after a
    priority-89 job; one from before 1970 sorted into the band of priority 91."""
    with pytest.raises(InvalidJob, match="workflow_datetime"):
        JobSpec(service="comfyui", priority=90, workflow_datetime=stamp)


def test_the_latest_accepted_workflow_datetime_keeps_priority_order(
    queue: QueueFunctions,
) -> None:
    """The bound: the last ms before 1e13 (year 2286) still sorts inside its priority."""
    late = JobSpec(service="comfyui", priority=90, workflow_datetime=10**13 - 1)
    low = JobSpec(service="comfyui", priority=10, workflow_datetime=0)
    queue.enqueue("late-p90", late, json.dumps({"id": "late-p90"}))
    queue.enqueue("early-p10", low, json.dumps({"id": "early-p10"}))
    assert claim_order(queue) == ["late-p90", "early-p10"]
