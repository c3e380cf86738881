"""A thread-pool worker's Redis connections do not grow with its threads.

Celery gives each thread of a worker its own result backend unless
``result_backend_thread_safe`` is set, each with a Redis client and pool of its own:
a ``-P threads -c 550`` worker held ~900 connections (bench/worker_memory.py)."""

from __future__ import annotations

import time

import pytest
import redis

from conftest import wait_for
from emp_tasks import producer

JOBS = 60


def result_store_connections(client: redis.Redis) -> int:
    """Connections whose last command was a MULTI/EXEC: Celery's Redis backend stores a
    result that way (SET and PUBLISH); the queue's own calls are FCALLs."""
    return sum(1 for entry in client.client_list() if entry["cmd"] == "exec")


@pytest.mark.timeout(180)
def test_a_threads_worker_shares_one_result_backend_across_its_threads(
        app, client: redis.Redis, start_worker) -> None:
    """Tried: a ``-P threads -c 70`` worker running 60 simulation jobs of 1 s submitted
    20 a second (about 20 running at once, ending 50 ms apart), so that some 20 pool
    threads each store results (Celery's result backend: SUCCESS). Before, each such
    thread opened a Redis connection of its own for its stores and kept it (22-40
    connections last used for a result store); now one backend's pool serves them all,
    a connection per store under way at once (1-3 here)."""
    start_worker("w-conns", args=["-P", "threads", "-c", "70"], WORKER_SERVICES="simulation")
    results = []
    for _ in range(JOBS):
        results.append(producer.submit("simulation", {"steps": 1, "duration": 1.0}, app=app))
        time.sleep(0.05)
    wait_for(lambda: all(r.state == "SUCCESS" for r in results), timeout=60, every=0.2,
             message="every job stored as SUCCESS")
    stores = result_store_connections(client)
    assert stores <= 8, f"{stores} connections of the worker's result backend for {JOBS} jobs"
