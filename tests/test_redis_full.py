"""Redis at ``maxmemory`` (policy ``noeviction``): it refuses every write, and workers and
the API must say so once and wait, never spin, answer 500 or write half a job."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from conftest import wait_for
from emp_tasks.producer import get_job, submit


@pytest.fixture
def redis_full(client: redis.Redis) -> Iterator[Callable[[], None]]:
    """Yields a function that fills Redis: ``maxmemory 1`` byte, so every write that may
    grow memory is refused (OOM) at once. Restored to no limit afterwards."""
    def fill() -> None:
        client.config_set("maxmemory", "1")

    try:
        yield fill
    finally:
        client.config_set("maxmemory", "0")


@pytest.mark.timeout(90)
def test_a_worker_waits_while_redis_refuses_its_claims(app, client, start_worker,
                                                        redis_full) -> None:
    """Tried: an idle worker, then Redis at maxmemory for 3 s (noeviction: each claim is
    refused with OOM), then memory freed and a job submitted. Before the fix the worker
    claimed again at once after every refusal: ~3,000 claims and as many "claim failed"
    ERROR lines a second (51,000 lines in 8 s by hand), Redis and a core kept busy."""
    worker = start_worker("full-w1")
    redis_full()
    time.sleep(3.0)  # a window to count refusals in, not a wait for an event
    client.config_set("maxmemory", "0")
    log = worker.log_path.read_text(errors="replace")
    refusals = log.count("claim failed")
    assert 1 <= refusals <= 2, f"{refusals} 'claim failed' lines in 3 s"
    assert "OOM" in log or "maxmemory" in log
    job = submit("echo", {"n": 1}, app=app)
    assert job.get(timeout=30)["echo"] == {"n": 1}
    wait_for(lambda: "claims accepted again" in worker.log_path.read_text(), timeout=10,
             message="the worker to say claims are accepted again")
    assert get_job(job.id, app=app)["attempts"] == 1
