"""Which task a submit by service name runs when several tasks declare that service.

Found moving a Celery project over: its own tasks declare ``service="echo"`` (the
service is what a worker must serve), and ``submit("echo", ...)`` (``emp submit``,
``POST /api/jobs``) ran one of them instead of ``emp.echo``: whichever the app had
registered last."""

from __future__ import annotations

import pytest

from capability_router.errors import InvalidJob
from capability_router.keys import Keys
from emp_tasks.producer import get_job, submit

#: A project's job types on a built-in's service and on a service of their own.
PROJECT_JOBS = '''
from celery import shared_task


@shared_task(name="acme.portrait", service="echo")
def portrait(**payload):
    return "portrait"


@shared_task(name="acme.render", service="render")
def render(**payload):
    return "render"


@shared_task(name="acme.render_hd", service="render")
def render_hd(**payload):
    return "render_hd"
'''


def declare(app, name: str, service: str) -> None:  # noqa: ANN001
    """The producer's side of a job type of ``PROJECT_JOBS``."""
    def body(**payload) -> None:  # noqa: ANN003
        """Runs on the workers only."""
    app.task(name=name, service=service, shared=False)(body)


@pytest.mark.timeout(120)
def test_a_submit_by_service_runs_the_services_own_task_or_is_refused(
        app, client, start_worker, jobs_env) -> None:
    """Tried: a project declaring ``acme.portrait`` on ``echo`` (after the built-ins were
    imported), then ``submit("echo", {"x": 1})``; and two tasks on a service ``render``.
    Before the fix the echo job ran ``acme.portrait`` (its result "portrait", not the
    echo), and ``submit("render")`` ran whichever of the two was registered last."""
    start_worker("w1", WORKER_SERVICES="echo,render", **jobs_env("project_jobs", PROJECT_JOBS))
    app.loader.import_default_modules()  # the built-ins first, as a project's app imports
    declare(app, "acme.portrait", "echo")
    declare(app, "acme.render", "render")
    declare(app, "acme.render_hd", "render")

    echoed = submit("echo", {"x": 1}, app=app)
    result = echoed.get(timeout=60)
    assert isinstance(result, dict) and result["echo"] == {"x": 1}, result  # was "portrait"
    assert get_job(echoed.id, app=app)["status"] == "completed"
    assert app.tasks["acme.portrait"].apply_async().get(timeout=60) == "portrait"

    def filed() -> tuple[set[str], int, set[str]]:  # not the worker's own (idle) keys
        keys = Keys("default")
        return ({key for key in client.scan_iter("emp:{default}:*")
                 if key.startswith((keys.job(""), keys.pending("")))},
                client.xlen(keys.events), set(client.hkeys(keys.classes)))

    before = filed()
    with pytest.raises(InvalidJob, match=r"service 'render' is the service of several job "
                                         r"types \(acme.render, acme.render_hd\)"):
        submit("render", {}, app=app)  # before: ran acme.render_hd
    assert filed() == before  # nothing filed
    assert app.send_task("acme.render_hd").get(timeout=60) == "render_hd"  # by name: fine


@pytest.mark.timeout(60)
def test_job_types_registered_after_a_submit_are_seen_by_the_next(app, client) -> None:
    """The producer reads the app's job types again only when its registry grew (it read
    the whole registry at every submit before). Tried, on one app: a submit of ``echo``;
    then a task of a new service ``paint`` registered: its submit must be filed under
    ``paint`` (an unknown-service refusal would mean a stale read); then a second task on
    ``paint``: the next submit must be refused as ambiguous, filing nothing."""
    submit("echo", {"x": 1}, app=app)
    with pytest.raises(InvalidJob, match="unknown service 'paint'"):
        submit("paint", {}, app=app)
    declare(app, "acme.paint", "paint")
    painted = submit("paint", {"n": 1}, app=app)
    assert get_job(painted.id, app=app)["service_required"] == "paint"
    declare(app, "acme.paint_hd", "paint")
    jobs = len(list(client.scan_iter("emp:{default}:job:*")))
    with pytest.raises(InvalidJob, match=r"several job types \(acme.paint, acme.paint_hd\)"):
        submit("paint", {"n": 2}, app=app)
    assert len(list(client.scan_iter("emp:{default}:job:*"))) == jobs
