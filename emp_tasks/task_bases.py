"""A job type's own task base class (``@app.task(base=...)``), made an ``EmpTask``.

Celery users keep their hooks (``on_success``, ``on_failure``, ``after_return``) on a
``celery.Task`` subclass and name it as ``base``. Celery builds the task from that class
alone, so it was no ``EmpTask``: it could not be submitted as a job (InvalidJob
"unknown task"), and a worker would run it without recording its outcome. Here such a
base gets ``EmpTask`` mixed in after it: its hooks and overrides come first, and a
``super()`` call in them reaches the job's lifecycle.
"""

from __future__ import annotations

from functools import cache

from celery import Task

from emp_tasks.task import EmpTask


@cache
def _with_job_lifecycle(base: type[Task]) -> type[Task]:
    """``base`` with ``EmpTask`` after it in the method order; one class per base."""
    return type(base.__name__, (base, EmpTask), {
        "__module__": base.__module__, "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
    })


def job_base(base: type[Task] | None) -> type[Task] | None:
    """The base class a task of the EMP app is built on: ``base`` when it is an
    ``EmpTask`` already (or None: the app's own), else ``base`` with ``EmpTask`` mixed in."""
    if base is None or issubclass(base, EmpTask):
        return base
    return _with_job_lifecycle(base)
