"""Eager mode (``task_always_eager``, how Celery users test) refuses what a submit does.

Found moving a Celery project over: its tests ran every call eagerly, so a call a real
submit refuses passed them."""

from __future__ import annotations

import pytest

from capability_router.errors import InvalidJob
from emp_tasks.app import create_app
from emp_tasks.job_types import job_type

#: apply_async keywords a submit refuses, one way each: the job id, the pool (as
#: ``queue``, ``pool``, ``requirements.pool``), the requirements, the payload and the
#: job fields.
REFUSED = [
    {"task_id": "a:events"},
    {"queue": "no such/pool"},
    {"pool": "bad name!"},
    {"requirements": {"pool": "x y"}},
    {"requirements": {"hardware": {"gpu_memory_gb": "lots"}}},
    {"requirements": {"customer_isolation": "weird"}},
    {"kwargs": {"x": "a" * (1024 * 1024 + 1)}},
    {"kwargs": {"x": float("nan")}},
    {"priority": 1000},
    {"max_retries": -1},
    # Celery's own count of earlier runs: -1 was filed as a retry of nothing, and the
    # job's first retry failed it (KeyError 'fields' in the enqueue)
    {"retries": -1},
    {"retries": 1.5},
    {"retries": "2"},
    {"customer_id": "a b"},
    {"workflow_datetime": "nope"},
    {"ctx": [1]},
]


def refusal(app, options: dict) -> str | None:  # noqa: ANN001 - a Celery app
    """What ``emp.echo.apply_async`` with ``options`` raises (its text), None if accepted."""
    try:
        job_type(app, "emp.echo").apply_async(**{"kwargs": {"x": 1}, **options})
    except InvalidJob as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("options", REFUSED, ids=lambda o: ",".join(o))
def test_eager_calls_refuse_what_a_submit_refuses(app, options: dict) -> None:
    """Tried: each call with ``task_always_eager=True`` and as a real submit (real Redis).
    Before the fix the eager call of an id a submit refuses (``task_id="a:events"``: the
    key of another job's event stream) ran and returned SUCCESS; the other refusals
    matched already (the eager call runs ``EmpTask.job_spec`` too)."""
    eager = create_app("redis://127.0.0.1:1/0", task_always_eager=True)  # no Redis there
    refused = refusal(app, options)
    assert refused is not None, f"a submit accepts {options}"
    assert refusal(eager, options) == refused


def test_an_eager_call_needs_no_redis() -> None:
    """An accepted eager call runs in the calling process, nothing sent (no Redis at
    that URL)."""
    eager = create_app("redis://127.0.0.1:1/0", task_always_eager=True)
    result = job_type(eager, "emp.echo").delay(x=1)
    assert result.get(timeout=5)["echo"] == {"x": 1}
    # an empty id is made by Celery, eagerly as in a submit
    assert job_type(eager, "emp.echo").apply_async(task_id="").get(timeout=5)["echo"] == {}
