"""Job types: the tasks of an app, found by task name, for messages sent by name."""

from __future__ import annotations

from typing import Any

from celery import Celery

from capability_router.errors import InvalidJob


def job_type(app: Celery, name: str) -> Any:
    """The task named ``name`` (an ``EmpTask``); raises InvalidJob when the app has none.

    A producer's app registers a job type module's tasks only once it imported
    the module, so the app's own modules (``include``, ``imports``) are
    imported before a name counts as unknown.
    """
    task = app.tasks.get(name)
    if task is None:
        app.loader.import_default_modules()
        task = app.tasks.get(name)
    if task is not None and not hasattr(task, "job_spec"):
        # registered as a plain Celery task (``app.register_task`` of a ``celery.Task``
        # subclass); ``@app.task(base=...)`` mixes EmpTask in (emp_tasks.task_bases)
        raise InvalidJob(f"task {name!r} is not an EMP job type: its class "
                         f"{type(task).__name__} does not derive from EmpTask (the "
                         "app's Task); declare it with @app.task or subclass app.Task")
    if task is None:
        known = ", ".join(sorted(
            task_name for task_name, task in app.tasks.items() if getattr(task, "service", None)
        )) or "none"
        raise InvalidJob(f"unknown task {name!r}: no job type of this app has that name "
                         f"(known: {known}); import its module in the producer")
    return task
