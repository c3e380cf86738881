"""The simulator hands out jobs in the order a real ``emp worker`` claims them."""

from __future__ import annotations

import redis

from capability_router.pools import parse_pools
from capability_router.simulator import POLICIES, Simulation, TraceJob
from capability_router.simulator.trace import Scenario
from conftest import wait_for
from emp_tasks.producer import submit

ONE_POOL = """
[pools.one]
gpu = true
gpu_memory_gb = [16, 24]
storage_gb = 100
durations_seconds = [0, 3600]
services = ["simulation"]
"""

#: (id, priority, GPU memory asked): queued before any worker runs, in this order.
JOBS = [("a", 50, None), ("b", 80, 8), ("c", 50, 8), ("d", 20, None), ("e", 80, None),
        ("f", 50, None), ("g", 95, 16), ("h", 20, 8)]


def requirements(memory: int | None) -> dict:
    return {"hardware": {"gpu_memory_gb": memory}} if memory else {}


def assigned_order(client: redis.Redis) -> list[str]:
    return [fields["job_id"] for _, fields in client.xrange("emp:{default}:events")
            if fields.get("event") == "job_assigned"]


def test_same_claim_order_as_a_real_worker(app, client: redis.Redis, start_worker) -> None:
    for job_id, priority, memory in JOBS:
        submit("simulation", {"steps": 1, "duration": 0.05}, requirements=requirements(memory),
               priority=priority, task_id=job_id, app=app)
    worker = start_worker("real-1", wait=False, EMP_AFFINITY="0",
                          WORKER_SERVICES="simulation", WORKER_GPU_MEMORY_GB="24")
    wait_for(lambda: len(client.zrange("emp:{default}:status:completed", 0, -1)) == len(JOBS),
             timeout=60)
    real = assigned_order(client)
    worker.stop()
    assert sorted(real) == sorted(j[0] for j in JOBS)

    # The same jobs, queued in the same order before the one machine comes up (hour 1).
    trace = [TraceJob(job_id, 1.0 + n, "simulation", 0.05, requirements=requirements(memory),
                      payload={"steps": 1}, priority=priority)
             for n, (job_id, priority, memory) in enumerate(JOBS)]
    scenario = Scenario(trace, {}, [0] + [1] * 23, 0.0, len(JOBS) + 1.0)
    record = Simulation(client, scenario, POLICIES["uniform"],
                        parse_pools(ONE_POOL, "one.toml")).run().record
    assert record.claim_order == real
    assert assigned_order(client) == real
    # Highest priority first, then the oldest: not the submit order.
    assert real == ["g", "b", "e", "a", "c", "f", "d", "h"]
