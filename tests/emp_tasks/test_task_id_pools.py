"""A job id names at most one job across all pools, for the Python submit paths
(``emp_tasks.producer.submit``, Celery's ``apply_async`` and ``send_task`` with a
``task_id``). Each pool refuses an id it already holds in one Redis Function call; before
the fix nothing looked in the other pools, so one id filed in two pools was two jobs
(reads, cancel, AsyncResult found whichever pool came first). Real redis-server."""

from __future__ import annotations

import pytest
import redis

from capability_router.errors import InvalidJob
from capability_router.functions import QueueFunctions
from capability_router.keys import JOB_EVENTS_SUFFIX, Keys
from emp_tasks.producer import submit

POOLS = ("default", "p1", "p2")


def filed(client: redis.Redis, job_id: str) -> list[str]:
    """The pools holding a record under ``job_id``."""
    return [pool for pool in POOLS if client.exists(Keys(pool).job(job_id))
            and not job_id.endswith(JOB_EVENTS_SUFFIX)]


def test_a_task_id_taken_in_one_pool_is_refused_in_another(app, client) -> None:
    """Tried: submit("echo", task_id="order-7", pool="p1"), then the same id with
    pool="p2" (producer.submit, i.e. apply_async), then app.send_task with that task_id
    and queue p2. Before the fix both later submits were filed: order-7 was three jobs
    in two pools. Now each later one raises InvalidJob "already exists", as a second
    submit in p1 does, and one job exists."""
    submit("echo", {"n": 1}, task_id="order-7", pool="p1", app=app)
    with pytest.raises(InvalidJob, match="already exists"):
        submit("echo", {"n": 2}, task_id="order-7", pool="p2", app=app)
    with pytest.raises(InvalidJob, match="already exists"):
        app.send_task("emp.echo", kwargs={"n": 3}, task_id="order-7", pool="p2")
    with pytest.raises(InvalidJob, match="already exists"):
        submit("echo", {"n": 4}, task_id="order-7", pool="p1", app=app)
    assert filed(client, "order-7") == ["p1"]


def test_a_chosen_id_equal_to_a_generated_one_is_refused_in_another_pool(app, client) -> None:
    """Tried: a job with a server-made id (uuid4) in pool p1, then a submit choosing that
    id (a producer re-sending the id it was given) in pool p2. Before the fix: filed,
    two jobs under one id. Now InvalidJob "already exists"; the id is the p1 job's."""
    made = submit("echo", {"n": 1}, pool="p1", app=app).id
    with pytest.raises(InvalidJob, match="already exists"):
        submit("echo", {"n": 2}, task_id=made, pool="p2", app=app)
    assert filed(client, made) == ["p1"]


def test_an_id_whose_filing_failed_or_was_swept_is_free_and_its_late_filing_refused(
        app, client) -> None:
    """Tried: an id reserved for pool p1 by a submit whose filing never happened (its
    process died, or Redis lost the call) and whose reservation is past the grace a
    filing takes, then the id submitted in pool p2; then the first filing arriving late
    in p1 (a hung Redis running it after all). Now the p2 submit is filed (the stale
    reservation does not hold the id for ever) and the late filing is refused, so one job
    exists. (The same holds for an id whose record was swept at its pool's retention.)"""
    from capability_router import job_id_reservations as reservations

    stale = reservations.Reservation("order-9", "p1", token="t-old", customer="")
    client.set(reservations.key("order-9"), stale.value,
               ex=reservations.GRACE_SECONDS)  # as old as the grace: stale
    submit("echo", {"n": 2}, task_id="order-9", pool="p2", app=app)
    late = QueueFunctions(client, "p1").enqueue(
        "order-9", {"class": "c", "class_json": "{}", "priority": 50, "fields": {}},
        "{}", id_token="t-old")
    assert late[0] == "fenced"
    assert filed(client, "order-9") == ["p2"]
