"""Celery apps for the end-to-end benchmarks, importable by worker subprocesses.

``emp_app`` goes through the EMP stack (``emp_tasks.app.create_app``);
``stock_app`` is plain Celery on kombu's Redis transport. Both have the same
worker settings (acks_late, prefetch 1, no result backend) and the same two
tasks: ``bench.noop`` counts its run in a Redis counter, ``bench.stamp``
pushes the delay from submission to its start (ms) to a Redis list. The EMP
app also has ``bench.hello`` (service ``hello``): it adds its worker's
``WORKER_ID`` to a set and holds the worker until the set has ``workers``
members, so that many workers each take one and all start the next work at once.

The Redis URL comes from ``BENCH_REDIS_URL`` (else ``EMP_REDIS_URL``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

from capability_router.cluster import make_client
from emp_tasks.app import create_app

URL = os.environ.get("BENCH_REDIS_URL") or os.environ.get("EMP_REDIS_URL") or ""

#: Counter the noop task increments once per run.
DONE_KEY = "bench:done"
#: List the stamp task pushes "start - submitted" (ms) to.
LATENCY_KEY = "bench:latency"

COMMON: dict[str, Any] = {
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,
    "task_ignore_result": True,
    "result_backend": None,
    "task_track_started": False,
    "task_send_sent_event": False,
    "worker_send_task_events": False,
    "worker_hijack_root_logger": False,
    "task_serializer": "json",
    "accept_content": ["json"],
    "broker_connection_retry_on_startup": True,
}

#: Set the hello task adds its worker's ``WORKER_ID`` to.
HELLO_KEY = "bench:hello"

_clients: dict[int, redis.Redis] = {}


def _client() -> redis.Redis:
    """One client per process (prefork children get their own after the fork)."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        client = _clients[pid] = make_client(URL)  # a RedisCluster under EMP_REDIS_CLUSTER
    return client


def _noop() -> None:
    _client().incr(DONE_KEY)


def _stamp(submitted: float) -> None:
    started = time.time()
    _client().lpush(LATENCY_KEY, repr((started - submitted) * 1000.0))


def _hello(workers: int = 1, timeout_s: float = 120.0) -> None:
    client = _client()
    client.sadd(HELLO_KEY, os.environ.get("WORKER_ID", ""))
    deadline = time.monotonic() + timeout_s
    while client.scard(HELLO_KEY) < workers and time.monotonic() < deadline:
        time.sleep(0.005)


emp_app: Celery = create_app(URL or None, **COMMON)
emp_noop = emp_app.task(name="bench.noop", service="noop", shared=False)(_noop)
emp_stamp = emp_app.task(name="bench.stamp", service="stamp", shared=False)(_stamp)
emp_hello = emp_app.task(name="bench.hello", service="hello", shared=False)(_hello)

stock_app: Celery = Celery("stock", broker=URL or None, set_as_current=False)
stock_app.conf.update(COMMON, task_default_queue="stock")
stock_noop = stock_app.task(name="bench.noop", shared=False)(_noop)
stock_stamp = stock_app.task(name="bench.stamp", shared=False)(_stamp)
