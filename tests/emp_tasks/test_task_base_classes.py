"""A job type built on a Celery user's own task base class (``@app.task(base=...)``).

Celery users put their hooks (``on_success``, ``on_failure``, ``after_return``) on a
``celery.Task`` subclass and name it as ``base``. Such a task was no ``EmpTask``: its
``apply_async`` raised InvalidJob "unknown task" while listing that very task among
the known ones, and nothing could be submitted."""

from __future__ import annotations

import pytest
import redis
from celery import Task

from capability_router.errors import InvalidJob
from conftest import wait_for
from emp_tasks.producer import get_job
from emp_tasks.task import EmpTask

#: Job types the worker imports: a plain ``celery.Task`` base with Celery's hooks.
BASE_JOBS = '''
import os

import redis
from celery import Task, shared_task


def log(*parts):
    redis.Redis.from_url(os.environ["EMP_REDIS_URL"]).rpush("test:hooks", "|".join(parts))


class Hooked(Task):
    acks_late = False  # a base class's own acks_late=False is ignored too

    def on_success(self, retval, task_id, args, kwargs):
        log("on_success", task_id, str(retval))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        log("on_failure", task_id, type(exc).__name__)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        log("after_return", task_id, status)


@shared_task(bind=True, name="test.hooked_double", service="echo", base=Hooked)
def hooked_double(self, x):
    return 2 * x


@shared_task(bind=True, name="test.hooked_fail", service="echo", base=Hooked)
def hooked_fail(self):
    raise KeyError("bad")
'''


class Hooked(Task):
    """The producer's copy of the worker's base class (a shared module in real use)."""

    acks_late = False


def hooked_task(app, name: str):  # noqa: ANN001, ANN201 - a Celery task
    def body(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        """Runs on the worker only."""
    return app.task(bind=True, name=name, service="echo", base=Hooked, shared=False)(body)


@pytest.mark.fast
def test_a_plain_celery_base_class_makes_an_emp_job_type(app) -> None:
    """Tried: ``@app.task(base=Hooked)`` with ``Hooked`` a ``celery.Task`` subclass, then
    ``apply_async``. Before the fix: InvalidJob "unknown task 'test.hooked_double': no job
    type of this app has that name (known: ..., test.hooked_double, ...)"."""
    task = hooked_task(app, "test.hooked_double")
    assert isinstance(task, EmpTask) and isinstance(task, Hooked)
    assert task.acks_late is True  # a job is acknowledged when its run ends
    record = get_job(task.apply_async(kwargs={"x": 1}).id, app=app)
    assert (record["status"], record["service_required"]) == ("pending", "echo")


@pytest.mark.fast
def test_a_registered_plain_celery_task_is_refused_saying_why(app, client) -> None:
    """Tried: ``app.register_task`` of a class-based ``celery.Task`` (not the app's
    Task), then ``send_task``. Before the fix: "unknown task 'test.plain_class': no job
    type of this app has that name", naming none of the cause; nothing is filed."""
    class PlainClass(Task):
        name = "test.plain_class"

        def run(self) -> None:
            """Never runs: refused at submit."""

    app.register_task(PlainClass())
    before = sorted(client.keys("*"))
    with pytest.raises(InvalidJob, match="not an EMP job type: its class PlainClass does "
                                         "not derive from EmpTask"):
        app.send_task("test.plain_class")
    assert sorted(client.keys("*")) == before


@pytest.mark.timeout(120)
def test_a_plain_celery_base_class_keeps_its_hooks_on_the_worker(
        app, client: redis.Redis, start_worker, jobs_env) -> None:
    """Tried: jobs of two tasks on a ``celery.Task`` base with ``on_success``,
    ``on_failure`` and ``after_return``, one returning, one raising, on a real worker.
    Before the fix neither could be submitted (InvalidJob "unknown task"); now each runs
    as a job (its record completed or failed) and Celery calls the base's hooks."""
    start_worker("w1", **jobs_env("base_jobs", BASE_JOBS))
    ok = hooked_task(app, "test.hooked_double").apply_async(args=(21,))
    failing = hooked_task(app, "test.hooked_fail").apply_async()
    assert ok.get(timeout=60) == 42
    with pytest.raises(KeyError, match="bad"):
        failing.get(timeout=60)
    assert get_job(ok.id, app=app)["status"] == "completed"
    record = get_job(failing.id, app=app)
    assert record["status"] == "failed" and "KeyError" in record["last_error"], record
    expected = {f"on_success|{ok.id}|42", f"after_return|{ok.id}|SUCCESS",
                f"on_failure|{failing.id}|KeyError", f"after_return|{failing.id}|FAILURE"}
    wait_for(lambda: set(client.lrange("test:hooks", 0, -1)) == expected, timeout=30,
             message="the base class's hooks, once each")
