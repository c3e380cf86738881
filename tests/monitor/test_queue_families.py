"""The scrape's per-family reading gives what summing the Queue view's classes gives.

``queue_families`` reads a per-family pending index kept by the library
(release 19) instead of every class; these tests build a queue that moved
through claims, requeues, cancels, delays and a restricted worker, and hold
its rows to ``family_rows`` of ``queue_summary`` (the class-by-class
reading the scrape did before) at the same clock.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from capability_router.functions import Claimed, QueueFunctions, ensure_library, library_source
from capability_router.jobspec import JobSpec
from capability_router.keys import NAMESPACES_KEY
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from tests.capability_router.test_library_versions import released_as
from webapp.monitor.metrics import capped_families, family_rows, requirements_label
from webapp.monitor.queue import queue_summary
from webapp.monitor.queue_families import queue_families

NOW = 1_900_000_000_000

FAMILIES: list[dict[str, Any]] = [
    {},
    {"requirements": {"hardware": {"gpu_memory_gb": 80}}},  # nobody has 80 GB
    {"requirements": {"hardware": {"gpu_memory_gb": 16}, "models": ["sdxl"]}},
    {"requirements": {"customer_isolation": "strict"}},
]


def live(client: redis.Redis, queue: QueueFunctions, profile: WorkerProfile,
         unhealthy: str | None = None) -> None:
    queue.register_worker(profile)
    WorkerRegistry(client).heartbeat(profile.as_dict(), [queue.namespace], [], ttl_ms=600_000,
                                     first=True, unhealthy=unhealthy)


def busy_queue(client: redis.Redis) -> None:
    """Two pools; 240 workflows of 10 customers over 4 families, mixed priorities, some
    delayed; then claims, requeues, cancels and a release moved jobs around; live
    workers include one serving only workflow wf-8, one denying customer c-4, and one
    whose service is down."""
    pools = {name: QueueFunctions(client, name) for name in ("default", "gpu")}
    client.sadd(NAMESPACES_KEY, *pools)
    for name, queue in pools.items():
        for n in range(240):
            spec = JobSpec.from_fields({
                "service_required": "echo", **FAMILIES[n % len(FAMILIES)],
                "workflow_id": f"wf-{n % 60}", "customer_id": f"c-{n % 10}",
                "priority": (0, 50, 90)[n % 3]})
            queue.enqueue(f"{name}-{n}", spec, json.dumps({"n": n}),
                          due_ms=NOW + 60_000 if n % 17 == 0 else 0, now_ms=NOW - n * 1000)
    queue = pools["default"]
    plain = WorkerProfile(worker_id="g24", services=["echo"], hardware={"gpu_memory_gb": 24},
                          models={"echo": ["sdxl"]})
    solo = WorkerProfile(worker_id="solo", services=["echo"], workflow_id="wf-8")
    picky = WorkerProfile(worker_id="picky", services=["echo"], hardware={"gpu_memory_gb": 24},
                          customer_access={"denied_customers": ["c-4"]})
    down = WorkerProfile(worker_id="down", services=["echo"], hardware={"gpu_memory_gb": 24})
    for profile in (plain, solo, picky):
        live(client, queue, profile)
    live(client, queue, down, unhealthy="echo is restarting")
    live(client, pools["gpu"], WorkerProfile(worker_id="gpu-1", services=["echo"],
                                             hardware={"gpu_memory_gb": 16}))
    claimed = [queue.claim(p.signature, p.worker_id, 60_000, now_ms=NOW)
               for p in (plain, picky, solo) * 4]
    claimed = [c for c in claimed if isinstance(c, Claimed)]
    assert len(claimed) >= 8
    for c in claimed[:3]:
        assert queue.requeue(c.job_id, c.attempt, "worker went away") == "pending"
    assert queue.release(claimed[3].job_id, claimed[3].attempt, "refused", now_ms=NOW)
    for n in (5, 9, 22, 34, 68):
        assert queue.cancel(f"default-{n}")[0] in ("cancelled", "completed", "failed")


def family_figures(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    keys = ("pool", "family", "service", "requirements", "pending", "oldest_age_seconds",
            "workers")
    return sorted(tuple(row[k] for k in keys) for row in rows)


def scrape_rows(client: redis.Redis, limit: int) -> list[tuple[Any, ...]]:
    rows = [{**row, "requirements": requirements_label(row)}
            for row in queue_families(client, now_ms=NOW)["families"]]
    return family_figures(capped_families(rows, limit))


def class_rows(client: redis.Redis, limit: int) -> list[tuple[Any, ...]]:
    return family_figures(family_rows(queue_summary(client, now_ms=NOW)["classes"], limit))


@pytest.mark.parametrize("limit", [100, 2])
def test_family_figures_equal_the_sum_of_the_class_rows(client, limit: int) -> None:
    """Tried: the busy queue above, read both ways with the family cap at 100 and at 2.
    Depth, oldest, least served class (0 for the 80 GB family; 1 for the plain family,
    whose class of the denied customer only the unrestricted worker serves), labels and
    the "other" row are the same."""
    busy_queue(client)

    expected = class_rows(client, limit)

    assert scrape_rows(client, limit) == expected
    if limit == 100:
        # Three live workers serve the plain family, but its class of customer c-4
        # outside workflow wf-8 has only g24.
        (plain,) = [row for row in expected if row[0] == "default" and row[3] == "none"]
        assert plain[-1] == 1
        assert {row[-1] for row in expected} >= {0, 1}


def test_jobs_an_older_release_left_pending_are_counted(client) -> None:
    """Tried: the busy queue as release 18 leaves it (no per-family index, the pool not
    marked indexed), then a scrape. Without filing those jobs first the scrape read
    every family as empty; it files them once and reads what the classes give."""
    busy_queue(client)
    expected = class_rows(client, 100)
    client.delete(*client.keys("emp:*:fam-pending:*"))
    for pool in ("default", "gpu"):
        client.hdel(f"emp:{{{pool}}}:config", "family_index")

    assert scrape_rows(client, 100) == expected
    assert client.hget("emp:{default}:config", "family_index") == "1"


def test_jobs_an_older_library_filed_after_the_index_was_built_are_counted(client) -> None:
    """Tried: the pool indexed by a scrape, then the server's library replaced by an older
    release (as when, after a FUNCTION FLUSH, an old machine loads its own during a
    rolling upgrade), which files a job without indexing it, then this release loads
    its library again. Before, the pool stayed marked indexed and the scrape left that
    job out of its family's depth; loading the library marks pools not indexed, so the
    next scrape files it."""
    busy_queue(client)
    scrape_rows(client, 100)
    assert client.hget("emp:{default}:config", "family_index") == "1"
    client.function_load(released_as(library_source(), "1-old"), replace=True)
    queue = QueueFunctions(client, "default")
    queue.enqueue("late", JobSpec.from_fields({"service_required": "echo",
                                                "workflow_id": "wf-late"}), "{}",
                  now_ms=NOW - 500_000)
    family = JobSpec.from_fields({"service_required": "echo"}).family_signature
    client.zrem(f"emp:{{default}}:fam-pending:{family}", "late")  # as release 18 filed it

    assert ensure_library(client) is True
    assert scrape_rows(client, 100) == class_rows(client, 100)
