"""Celery's ``send_task`` (and canvas steps a producer does not have registered) file
the job under its job type's service, or are refused before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from capability_router.errors import InvalidJob
from conftest import ROOT
from emp_tasks.producer import get_job

#: A producer in a fresh process: its app has imported no job type module yet.
FRESH_PRODUCER = """
import json, sys
from celery import chain
from emp_tasks.app import create_app
app = create_app(sys.argv[1])
single = app.send_task("emp.echo", kwargs={"n": 1})
steps = chain(app.signature("emp.echo", kwargs={"n": 2}),
              app.signature("emp.echo", kwargs={"n": 3}, immutable=True)).apply_async()
print(json.dumps({"single": single.id, "first": steps.parent.id, "last": steps.id}))
"""


def test_send_task_by_name_runs_on_the_job_types_worker(app, start_worker) -> None:
    """Tried: ``app.send_task("emp.echo", kwargs=...)``, the plain Celery call, with a
    worker serving echo. Before the fix the job was filed under service
    ``emp.echo`` (the task name), which no worker serves, and ``get()`` timed out."""
    start_worker("w1")
    result = app.send_task("emp.echo", kwargs={"x": 1}, requirements={}, priority=70)
    assert result.get(timeout=30)["echo"] == {"x": 1}
    record = get_job(result.id, app=app)
    assert record["service_required"] == "echo" and record["status"] == "completed"
    assert record["priority"] == 70


def test_fresh_producers_send_task_and_canvas_steps_run(app, redis_server, start_worker) -> None:
    """Tried: a producer process whose app never imported the echo module sends
    ``emp.echo`` by name and as a two-step chain (steps it has not registered go
    through ``send_task``). Before the fix each was filed under ``emp.echo``."""
    start_worker("w1")
    done = subprocess.run([sys.executable, "-c", FRESH_PRODUCER, redis_server.url],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    assert app.AsyncResult(ids["single"]).get(timeout=30)["echo"] == {"n": 1}
    assert app.AsyncResult(ids["last"]).get(timeout=30)["echo"] == {"n": 3}
    for job_id in ids.values():
        assert get_job(job_id, app=app)["service_required"] == "echo"


@pytest.mark.parametrize("name", ["emp.no_such_task", "echo"])
def test_send_task_of_an_unknown_task_is_refused_writing_nothing(app, client, name) -> None:
    """Tried: ``send_task`` of a name no job type has (``echo`` is a service, not a
    task name). Before the fix it was filed under that name, waiting for ever."""
    before = sorted(client.keys("*"))
    with pytest.raises(InvalidJob, match=f"unknown task {name!r}.*emp.echo"):
        app.send_task(name, kwargs={"x": 1})
    assert sorted(client.keys("*")) == before
