"""The job life cycle on a real Redis Cluster: one worker, two pools on different masters."""

from __future__ import annotations

import pytest
import redis
from celery import chord, group
from cluster_fixtures import *  # noqa: F403 - the cluster fixtures

from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks.producer import cancel, get_job, job_events, services, submit

pytestmark = pytest.mark.slow


def status_of(app, job_id: str) -> str:  # noqa: ANN001
    return get_job(job_id, app=app)["status"]


def test_pools_live_on_different_masters(cluster, cclient, pools, capp) -> None:
    first, second = pools
    jobs = {pool: submit("echo", {"pool": pool}, pool=pool, app=capp).id for pool in pools}
    for pool, job_id in jobs.items():
        port = cluster.port_of_slot(cclient.keyslot(Keys(pool).config))
        node = redis.Redis(port=port)
        assert node.exists(Keys(pool).job(job_id)) == 1  # the record lives on that master
    assert (cluster.port_of_slot(cclient.keyslot(Keys(first).config))
            != cluster.port_of_slot(cclient.keyslot(Keys(second).config)))


def test_one_worker_serves_two_pools_through_the_life_cycle(
        capp, cclient, pools, start_cluster_worker) -> None:
    """Run, cancel and retry jobs of two pools, then Celery's group and chord of them:
    before the fix ``GroupResult.get()`` raised "MGET - all keys must map to the same key
    slot" and a chord's body never ran (its counters' script spanned slots)."""
    first, second = pools
    start_cluster_worker("w1", pools)

    done = submit("simulation", {"steps": 4, "duration": 0.4}, pool=first, app=capp)
    assert done.get(timeout=30)["steps"] == 4
    events = [e["event"] for e in job_events(done.id, app=capp)]
    assert events[:3] == ["job_submitted", "job_assigned", "job_started"]
    assert events.count("update_job_progress") == 4 and events[-1] == "complete_job"

    echoed = submit("echo", {"x": 2}, pool=second, app=capp)
    echoed.get(timeout=30)
    record = get_job(echoed.id, app=capp)
    assert record["status"] == "completed" and record["worker_id"] == "w1"

    retried = submit("echo", {"fail_times": 1}, pool=second, app=capp)
    assert retried.get(timeout=30)["retries"] == 1
    assert get_job(retried.id, app=capp)["attempts"] == 2

    running = submit("echo", {"sleep": 30}, pool=first, app=capp)
    wait_for(lambda: status_of(capp, running.id) == "in_progress", timeout=30,
             message="the long job to start")
    assert cancel(running.id, app=capp) == "cancelled"
    after = submit("echo", {"x": 3}, pool=second, app=capp)
    after.get(timeout=30)  # the worker is free again
    assert status_of(capp, running.id) == "cancelled"

    pending = submit("echo", {"x": 4}, pool=first, app=capp, countdown=60)
    assert cancel(pending.id, app=capp) == "cancelled"

    echo = services(capp)["echo"]
    steps = [echo.si(n=n).set(pool=pool) for n, pool in enumerate((first, second, first))]
    assert [r["echo"] for r in group(steps).apply_async().get(timeout=30)] == [
        {"n": 0}, {"n": 1}, {"n": 2}]
    body = chord(steps, echo.si(n=9).set(pool=second)).apply_async()
    assert body.get(timeout=30)["echo"] == {"n": 9}


def test_a_killed_workers_job_returns_after_its_lease(
        capp, pools, start_cluster_worker) -> None:
    first, second = pools
    doomed = start_cluster_worker("doomed", [second])
    job = submit("echo", {"sleep": 4}, pool=second, app=capp)
    wait_for(lambda: status_of(capp, job.id) == "in_progress", timeout=30, message="start")
    doomed.kill()
    start_cluster_worker("survivor", pools)
    job.get(timeout=30)
    record = get_job(job.id, app=capp)
    assert record["status"] == "completed" and record["worker_id"] == "survivor"
    assert record["attempts"] == 2
