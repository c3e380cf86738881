"""One job id, one job, across pools on different masters of a real Redis Cluster: the
id's reservation lives in a third slot, so reserving and filing are separate calls."""

from __future__ import annotations

import pytest
from cluster_fixtures import *  # noqa: F403 - the cluster fixtures

from capability_router import job_id_reservations as reservations
from capability_router.errors import InvalidJob
from capability_router.functions import QueueFunctions
from capability_router.keys import Keys
from emp_tasks.producer import submit

pytestmark = pytest.mark.slow


def test_an_id_is_one_job_across_masters(cluster, cclient, pools, capp) -> None:
    """Tried: task_id "c-order-1" submitted in one pool, then in a pool whose slot is on
    another master; then an id whose reservation for the first pool is stale (its filing
    never came) submitted in the second pool, and that filing arriving late. Before the
    fix the second submit was filed beside the first (two jobs, one id). Now it raises
    InvalidJob "already exists"; the stale id is filed in the second pool, and the late
    filing is refused in the first (fenced on its master)."""
    first, second = pools
    submit("echo", {"n": 1}, task_id="c-order-1", pool=first, app=capp)
    with pytest.raises(InvalidJob, match="already exists"):
        submit("echo", {"n": 2}, task_id="c-order-1", pool=second, app=capp)
    assert [p for p in pools if cclient.exists(Keys(p).job("c-order-1"))] == [first]

    stale = reservations.Reservation("c-order-2", first, token="t-old")
    cclient.set(reservations.key("c-order-2"), stale.value, ex=reservations.GRACE_SECONDS)
    submit("echo", {"n": 3}, task_id="c-order-2", pool=second, app=capp)
    late = QueueFunctions(cclient, first).enqueue(
        "c-order-2", {"class": "c", "class_json": "{}", "priority": 50, "fields": {}},
        "{}", id_token="t-old")
    assert late[0] == "fenced"
    assert [p for p in pools if cclient.exists(Keys(p).job("c-order-2"))] == [second]
