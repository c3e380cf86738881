"""A Redis that comes back empty (restarted without persistence) while producers run."""

from __future__ import annotations

import time

import pytest
import redis

from capability_router.states import JobStatus
from emp_tasks.producer import cancel, get_job, submit

pytestmark = pytest.mark.fast


def test_jobs_of_a_pool_are_found_again_after_redis_lost_its_data(app, client: redis.Redis
                                                                  ) -> None:
    """Tried: a producer submits to pool "after-loss", Redis loses everything (FLUSHALL and
    FUNCTION FLUSH: what a restart without persistence leaves), and the producer submits
    to that pool again. Before the fix the producer recorded the pool in the set of
    pools once per process, so the new job was filed but read and cancel answered
    "not found" for everyone, and the webhook consumer and monitor skipped its pool."""
    options = dict(app.conf.broker_transport_options)
    app.conf.broker_transport_options = {**options, "namespace_refresh_seconds": 0.2}
    first = submit("simulation", {}, app=app, pool="after-loss").id
    assert get_job(first, app=app)["pool"] == "after-loss"

    client.flushall()
    client.function_flush()
    time.sleep(0.3)
    second = submit("simulation", {}, app=app, pool="after-loss").id
    assert get_job(second, app=app)["status"] == JobStatus.PENDING
    assert cancel(second, app=app) == JobStatus.CANCELLED
