"""Job ids a producer chooses (``task_id``) against a real worker: the id is the job's
key name and part of its delivery tag."""

from __future__ import annotations

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
