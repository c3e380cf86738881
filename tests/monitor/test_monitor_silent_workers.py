"""A SIGKILLed worker, as the monitor shows it: silent after one lease, not live for three.

Real workers and a real ``emp monitor``, read over HTTP (the JSON each page draws).
The registry keeps a killed worker's record for three leases; the monitor must stop
counting it after one (``webapp.monitor.liveness``), as the Machines page already did
for a whole group of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import requests

from capability_router.functions import redis_now_ms
from capability_router.registry import WorkerRegistry
from conftest import wait_for
from emp_tasks.producer import submit

LEASE = "3"  # worker and monitor alike: the record outlives a killed worker by 9 s


def _killed_and_silent(client: redis.Redis, worker: Any) -> None:
    """SIGKILL ``worker`` and wait until its last heartbeat is over a lease old, while
    its registry record (three leases) is still there."""
    worker.kill()
    seen = next(r["last_seen"] for r in WorkerRegistry(client).workers()
                if r["worker_id"] == worker.worker_id)
    wait_for(lambda: redis_now_ms(client) - seen > float(LEASE) * 1000 + 300, timeout=10,
             message="a lease of silence")
    assert worker.worker_id in {r["worker_id"] for r in WorkerRegistry(client).workers()}


def test_a_killed_worker_stops_serving_on_the_queue_page_and_in_a_jobs_servability(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        client: redis.Redis, app: Any) -> None:
    """Tried: an 80 GB worker beside a 24 GB one, the 80 GB one SIGKILLed, then a job
    needing 80 GB filed. A lease later (its record still in the registry) the Queue
    page's row named the dead worker under "live workers that can serve it"
    (unservable false) and the job page's servability said "live workers that can serve
    it: big", for three leases (~90 s by default). Now both say no live worker can."""
    monitor = start_server("monitor", EMP_LEASE_SECONDS=LEASE)
    start_worker("small", WORKER_GPU_MEMORY_GB="24", EMP_LEASE_SECONDS=LEASE)
    big = start_worker("big", WORKER_GPU_MEMORY_GB="80", EMP_LEASE_SECONDS=LEASE)
    _killed_and_silent(client, big)
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 80}},
                 app=app)

    queue = requests.get(monitor.base + "/emp/api/queue", timeout=10).json()
    (row,) = [c for c in queue["classes"] if "hardware.gpu_memory_gb >= 80" in c["requirements"]]
    assert row["workers"] == [] and row["unservable"] is True, row
    assert queue["workers"]["silent"] == 1 and queue["workers"]["idle"] == 1, queue["workers"]

    detail = requests.get(monitor.base + f"/emp/api/jobs/{job.id}", timeout=10).json()
    servability = detail["job"]["servability"]
    assert servability["servable"] is False and servability["workers"] == [], servability
    assert "big" not in servability["reason"].split("Live workers in pool default:")[-1]
    assert "No live worker can serve this job" in servability["reason"]


def test_a_killed_worker_beside_live_ones_reads_silent_on_the_machines_page(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        client: redis.Redis) -> None:
    """Tried: two workers of machine id box-1 (no machine record), one SIGKILLed. A lease
    later the group was not stale (its newest heartbeat was fresh) and the dead worker
    still read "idle" on the Machines page. Now that worker reads "silent", the group
    says so, and its live neighbour stays idle."""
    monitor = start_server("monitor", EMP_LEASE_SECONDS=LEASE)
    start_worker("alive", MACHINE_ID="box-1", EMP_LEASE_SECONDS=LEASE)
    dead = start_worker("dead", MACHINE_ID="box-1", EMP_LEASE_SECONDS=LEASE)
    _killed_and_silent(client, dead)

    page = requests.get(monitor.base + "/emp/api/machines?view=page", timeout=10).json()
    (box,) = [m for m in page["machines"] if m["machine_id"] == "box-1"]
    status = {w["worker_id"]: w["status"] for w in box["workers"]}
    assert status == {"alive": "idle", "dead": "silent"}, status
    assert box["stale"] is False and box["healthy"] is False
    assert "dead" in box["health_reason"] and "heartbeat" in box["health_reason"]


def test_each_worker_is_judged_silent_by_its_own_lease(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        client: redis.Redis) -> None:
    """Tried: a monitor with a 3 s lease reading a worker started with a 15 s one (it
    heartbeats every 5 s) and one with a 2 s lease, SIGKILLed. Before: the monitor judged
    both by its own lease, so the healthy 15 s worker read "silent" on the Machines and
    Queue pages for the last 2 s of every heartbeat gap, and the dead 2 s worker read
    "idle" until its heartbeat was 3 s old. Now each is judged by the lease its record
    carries: the 15 s worker stays idle however old its heartbeat within its lease, the
    killed 2 s one reads silent a lease after its last heartbeat; a record without a
    lease (a worker from before it was recorded) is judged by the monitor's."""
    monitor = start_server("monitor", EMP_LEASE_SECONDS=LEASE)
    # A record as a worker from before ``lease_ms`` wrote it, one heartbeat and no more:
    # judged by the monitor's lease.
    registry = WorkerRegistry(client)
    registry.heartbeat({"worker_id": "old", "machine_id": "box-2", "services": ["simulation"]},
                       ["default"], [], ttl_ms=60_000, first=True)
    start_worker("steady", MACHINE_ID="box-2", EMP_LEASE_SECONDS="15")
    quick = start_worker("quick", MACHINE_ID="box-2", EMP_LEASE_SECONDS="2")
    assert "lease_ms" not in next(r for r in registry.workers() if r["worker_id"] == "old")

    def read() -> tuple[dict[str, Any], dict[str, Any]]:
        page = requests.get(monitor.base + "/emp/api/machines?view=page", timeout=10).json()
        (box,) = [m for m in page["machines"] if m["machine_id"] == "box-2"]
        queue = requests.get(monitor.base + "/emp/api/queue", timeout=10).json()
        return {w["worker_id"]: w for w in box["workers"]}, queue["workers"]

    # Read the pages once the steady worker's heartbeat is over the monitor's lease old
    # (by Redis' clock, before reading) and the pages show that same heartbeat.
    def steady_heartbeat_old() -> tuple[dict[str, Any], dict[str, Any]] | None:
        seen = next(r["last_seen"] for r in WorkerRegistry(client).workers()
                    if r["worker_id"] == "steady")
        if redis_now_ms(client) - seen <= float(LEASE) * 1000 + 200:
            return None
        workers, counts = read()
        return (workers, counts) if workers["steady"]["last_seen"] == seen else None

    workers, counts = wait_for(steady_heartbeat_old, timeout=15, every=0.2,
                               message="a heartbeat of the 15 s worker over 3 s old")
    assert workers["steady"]["status"] == "idle", workers["steady"]
    assert workers["old"]["status"] == "silent", workers["old"]  # older than steady's
    assert counts["silent"] == 1 and counts["idle"] == 2, counts

    quick.kill()
    seen = next(r["last_seen"] for r in registry.workers() if r["worker_id"] == "quick")
    wait_for(lambda: redis_now_ms(client) - seen > 2200, timeout=10, message="2.2 s of silence")
    workers, counts = read()
    assert workers["quick"]["status"] == "silent", workers["quick"]
    assert workers["steady"]["status"] == "idle", workers["steady"]
    assert counts["silent"] == 2 and counts["idle"] == 1, counts
