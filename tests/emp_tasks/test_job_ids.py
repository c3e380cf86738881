"""Job ids a producer chooses (``task_id``) against a real worker: the id is the job's
key name and part of its delivery tag."""

from __future__ import annotations

import pytest

from capability_router.errors import InvalidJob
from conftest import wait_for
from emp_tasks.producer import get_job, submit


def test_a_job_id_with_a_bar_runs_and_the_worker_goes_on(app, start_worker) -> None:
    """Tried: submit("echo", task_id="order|42") from Python (Celery takes any text as a
    task id), then an ordinary job. Before the fix the delivery tag
    ``emp|<pool>|<job id>|<attempt>`` was split on every '|', so the worker's ack and
    lease renewal of that job raised ValueError ("too many values to unpack")."""
    start_worker("w1")
    odd = submit("echo", {"value": 1}, task_id="order|42", app=app)
    assert odd.get(timeout=30) is not None
    after = submit("echo", {"value": 2}, app=app)
    assert after.get(timeout=30) is not None
    wait_for(
        lambda: get_job("order|42", app=app)["status"] == "completed",
        message="the job with a bar in its id to complete",
    )


def test_message_id_and_a_different_task_id_are_refused(app, client) -> None:
    """Tried: ``submit("echo", message_id="a", task_id="b")``. Before, message_id
    silently won and the job was filed as "a"; REST refuses a body naming both
    ``message_id`` and ``job_id`` the same way. Now InvalidJob names both, and nothing
    is written. The same id given both ways is one id, and is filed."""
    submit("echo", {}, app=app)  # the pool and library exist: only the refusal is compared
    before = {key: client.dump(key) for key in client.keys("*")}
    with pytest.raises(InvalidJob, match="message_id 'a' and task_id 'b' name two ids"):
        submit("echo", {}, message_id="a", task_id="b", app=app)
    assert {key: client.dump(key) for key in client.keys("*")} == before
    assert submit("echo", {}, message_id="same", task_id="same", app=app).id == "same"
