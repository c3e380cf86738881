"""Celery's ``add_consumer`` / ``cancel_consumer`` (``celery control``, Flower's worker
page): which pools a running worker serves, as the registry and routing see it."""

from __future__ import annotations

import json

import pytest
import redis

from capability_router.keys import Keys, idle_workers
from capability_router.states import JobStatus
from conftest import wait_for
from emp_tasks.producer import get_job


@pytest.mark.timeout(120)
def test_cancel_consumer_takes_the_worker_out_of_the_pool(
        app, client: redis.Redis, start_worker) -> None:
    """Tried: ``app.control.add_consumer("gpu")`` on a worker of pool default, a job of
    pool gpu (it ran), then ``cancel_consumer("gpu")``. Before the fix the worker stopped
    claiming gpu jobs but its heartbeats went on listing it as a live worker of gpu (the
    pool's ``workers`` zset, read by routing's pool load, and the registry's ``pools``,
    shown by the monitor) for as long as it ran."""
    start_worker("w1")
    assert app.control.add_consumer("gpu", reply=True, timeout=10, limit=1)
    job = app.send_task("emp.echo", kwargs={"message": "hi"}, queue="gpu")
    assert job.get(timeout=60)
    assert client.zscore(Keys("gpu").workers, "w1") is not None

    assert app.control.cancel_consumer("gpu", reply=True, timeout=10, limit=1)
    wait_for(lambda: client.zscore(Keys("gpu").workers, "w1") is None, timeout=30,
             message="the worker to leave pool gpu's live workers")
    assert "w1" not in idle_workers(client.zrange(Keys("gpu").idle, 0, -1))
    wait_for(lambda: json.loads(client.hget("emp:worker:w1", "pools")) == ["default"],
             timeout=30, message="the registry to list pool default only")
    left = app.send_task("emp.echo", kwargs={"message": "stays"}, queue="gpu")
    assert app.send_task("emp.echo", kwargs={"message": "runs"}).get(timeout=60)
    assert get_job(left.id, app=app)["status"] == JobStatus.PENDING
