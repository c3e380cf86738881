"""Pool names a URL path cannot carry ('.' and '..') are refused wherever a Python producer,
``emp submit`` or a worker would make such a pool: real Redis, real ``emp`` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import redis

from capability_router.errors import InvalidJob
from capability_router.keys import NAMESPACES_KEY
from conftest import ROOT
from emp_tasks.app import create_app
from emp_tasks.producer import get_job, submit


def _written(client: redis.Redis) -> tuple[set[str], set[str]]:
    """Every key, and the set of pools (what a submit to a new pool adds to)."""
    return set(client.scan_iter()), client.smembers(NAMESPACES_KEY)


def _task(app: Any, name: str, **options: Any) -> Any:
    def body() -> None:
        """Runs on workers only."""
    return app.task(name=name, service="echo", shared=False, **options)(body)


def test_python_submits_naming_a_dot_pool_are_refused_naming_the_option(
        redis_server, client: redis.Redis, app) -> None:
    """Tried: ``apply_async(queue="..")``, ``apply_async(pool=".")``, ``requirements=
    {"pool": ".."}``, a task declaring ``queue=".."``, a ``task_routes`` route to "..",
    ``send_task(queue=".")`` and ``submit("echo", pool="..")``. Before the fix each was
    filed, making pool '..' (or '.') for good, which /api/pools/<pool> can never reach:
    HTTP clients drop such a path segment. Now each raises InvalidJob naming the option,
    and nothing is written; "..." is still a pool name."""
    plain = _task(app, "test.dots.plain")
    queued = _task(app, "test.dots.queued", queue="..")
    routed_app = create_app(redis_server.url, task_routes={"test.dots.routed": {"queue": ".."}})
    routed = _task(routed_app, "test.dots.routed")
    before = _written(client)
    cases = [
        ("queue: '..'", lambda: plain.apply_async(queue="..")),
        ("pool: '.'", lambda: plain.apply_async(pool=".")),
        ("requirements.pool: '..'", lambda: plain.apply_async(requirements={"pool": ".."})),
        ("the queue option of task 'test.dots.queued': '..'", lambda: queued.apply_async()),
        ("task_routes for 'test.dots.routed': '..'", lambda: routed.apply_async()),
        ("queue: '.'", lambda: app.send_task("test.dots.plain", queue=".")),
        ("pool: '..'", lambda: submit("echo", pool="..", app=app)),
    ]
    try:
        for said, call in cases:
            with pytest.raises(InvalidJob) as refused:
                call()
            assert str(refused.value).startswith(f"{said} cannot be a pool name"), refused.value
            assert "path segment" in str(refused.value)
        assert _written(client) == before
    finally:
        routed_app.close()
    assert get_job(plain.apply_async(pool="...").id, app=app)["pool"] == "..."


EMP = [sys.executable, "-m", "emp_tasks.cli"]


def _run(args: list[str], env: dict[str, str], command: list[str] = EMP
         ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "WORKER_SERVICES": "echo", **env}
    for name in ("WORKER_POOLS", "MACHINE_POOL"):
        if name not in env:
            full.pop(name, None)
    try:
        return subprocess.run([*command, *args], env=full, capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args)} with {env} kept running (it served the pool)")


def test_emp_submit_refuses_a_dot_pool_naming_the_option(
        redis_server, client: redis.Redis) -> None:
    """Tried: ``emp submit echo --pool .. --no-wait``. Before the fix it printed a job id,
    its job filed in a new pool '..' for good. Now it exits 2 naming --pool, and nothing
    is written."""
    before = _written(client)
    done = _run(["submit", "echo", "--pool", "..", "--no-wait"],
                {"EMP_REDIS_URL": redis_server.url})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Invalid value for --pool: '..' cannot be a pool name" in done.stderr, done.stderr
    assert _written(client) == before


@pytest.mark.timeout(240)
def test_workers_refuse_a_dot_pool_naming_the_setting(redis_server, client: redis.Redis) -> None:
    """Tried: ``emp worker -Q ..``, ``emp worker`` with WORKER_POOLS=. and with
    MACHINE_POOL=.., and ``celery -A emp_tasks.app worker`` with WORKER_POOLS=... Before
    the fix each started serving its dot pool (adding it to the set of pools for good).
    Now each exits at once with one line naming the option or variable."""
    url = {"EMP_REDIS_URL": redis_server.url}
    before = _written(client)
    for args, env, named in ((["-Q", ".."], {}, "-Q"), ([], {"WORKER_POOLS": "."}, "WORKER_POOLS"),
                             ([], {"MACHINE_POOL": ".."}, "MACHINE_POOL")):
        done = _run(["worker", *args], {**url, **env})
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{named}: '{env.get(named, '..')}' cannot be a pool name" in done.stderr, (
            done.stderr)
        assert "Traceback" not in done.stderr
    plain = _run(["-A", "emp_tasks.app", "worker", "-c", "1"], {**url, "WORKER_POOLS": ".."},
                 [sys.executable, "-m", "celery"])
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert "'..' cannot be a pool name" in plain.stderr, plain.stderr[-2000:]
    assert _written(client)[1] == before[1]
    assert not [key for key in client.scan_iter() if key.startswith(("emp:{.}", "emp:{..}"))]


def test_a_job_naming_two_pools_is_refused_naming_both(redis_server, client: redis.Redis,
                                                       app) -> None:
    """Tried: ``emp submit simulation --pool standard --requirements '{"pool": "heavy"}'``
    and ``POST /api/jobs`` with ``pool: "standard", requirements: {"pool": "heavy"}``:
    filed in heavy, the ``pool`` given dropped without a word (``queue=`` against ``pool=``
    was already refused). Now every way in (``JobSpec``) refuses it naming both; the same
    pool twice is accepted."""
    from click.testing import CliRunner

    from capability_router.jobspec import JobSpec
    from emp_tasks.cli import main

    with pytest.raises(InvalidJob, match=r"pool 'standard' and requirements.pool 'heavy' "
                                         r"name two pools"):
        JobSpec(service="echo", pool="standard", requirements={"pool": "heavy"})
    assert JobSpec(service="echo", pool="heavy", requirements={"pool": "heavy"}).pool == "heavy"
    plain = _task(app, "test.two.plain")
    before = _written(client)
    with pytest.raises(InvalidJob, match="name two pools"):
        plain.apply_async(pool="standard", requirements={"pool": "heavy"})
    done = CliRunner().invoke(main, ["--redis-url", redis_server.url, "submit", "echo",
                                     "--pool", "standard", "--requirements",
                                     '{"pool": "heavy"}', "--no-wait"])
    assert done.exit_code != 0 and "name two pools" in done.output, done.output
    assert _written(client) == before


def test_a_queue_and_a_requirements_pool_that_differ_are_refused_naming_the_queue(
        redis_server, client: redis.Redis, app) -> None:
    """Tried: ``apply_async(queue="standard", requirements={"pool": "heavy"})``, and a task
    whose ``queue`` option is ``standard`` sent with ``requirements={"pool": "heavy"}``.
    Before: refused, but the message said "pool 'standard' and requirements.pool 'heavy'",
    naming a ``pool`` the caller never gave. Now it names what was given, and nothing is
    written."""
    plain = _task(app, "test.two.queue")
    queued = _task(app, "test.two.task_queue", queue="standard")
    before = _written(client)
    with pytest.raises(InvalidJob, match=r"^queue='standard' and requirements.pool='heavy' "
                                         r"name two pools"):
        plain.apply_async(queue="standard", requirements={"pool": "heavy"})
    with pytest.raises(InvalidJob, match=r"^the queue option of task 'test.two.task_queue' "
                                         r"\('standard'\) and requirements.pool='heavy'"):
        queued.apply_async(requirements={"pool": "heavy"})
    assert _written(client) == before
