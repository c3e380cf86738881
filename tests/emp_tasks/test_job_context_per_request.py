"""``EmpTask.job`` is kept per request, and never read for another one.

A connector job reads ``task.job`` at every progress report, so it is kept after its
first build (one per request, per thread). Tried: a run, then another run on the same
thread (a pool thread serves job after job), a request pushed inside a run and popped
again, and two threads each running their own job. A stale context would make a
progress report, a cancel check or an outcome go to another job's record, or to an
old attempt (whose writes the record refuses: the run would look cancelled).
"""

from __future__ import annotations

import threading

from capability_router.jobspec import HEADER
from capability_router.transport import ATTEMPT_HEADER
from emp_tasks.app import create_app
from emp_tasks.task import EmpTask


def _task():
    app = create_app("redis://127.0.0.1:1/0")  # never connected to: the context is lazy

    @app.task(name="test.job_context", shared=False)
    def job() -> None:
        """Never run: its requests are pushed by hand."""

    assert isinstance(job, EmpTask)
    return job


def _run(task, job_id: str, attempt: int, pool: str = "default") -> None:
    task.push_request(id=job_id, **{ATTEMPT_HEADER: attempt, HEADER: {"pool": pool}})


def test_each_run_on_a_thread_gets_its_own_job():
    task = _task()
    _run(task, "job-a", 1)
    first = task.job
    assert (first.job_id, first.attempt, first.namespace) == ("job-a", 1, "default")
    assert task.job is first  # kept
    task.pop_request()
    _run(task, "job-b", 3, "pool-b")
    second = task.job
    assert (second.job_id, second.attempt, second.namespace) == ("job-b", 3, "pool-b")
    task.pop_request()
    assert task.job is None  # no request: run eagerly


def test_a_pushed_request_and_back():
    task = _task()
    _run(task, "job-a", 1)
    assert task.job.attempt == 1
    task.push_request(**{ATTEMPT_HEADER: 2})  # same id, a copy of the request: next attempt
    assert (task.job.job_id, task.job.attempt) == ("job-a", 2)
    task.pop_request()
    assert (task.job.job_id, task.job.attempt) == ("job-a", 1)
    task.pop_request()


def test_threads_keep_their_own():
    task = _task()
    seen: dict[str, tuple[str, int]] = {}
    barrier = threading.Barrier(2)

    def run(job_id: str, attempt: int) -> None:
        _run(task, job_id, attempt)
        try:
            task.job  # noqa: B018 - kept on this thread
            barrier.wait(5)
            seen[job_id] = (task.job.job_id, task.job.attempt)
        finally:
            task.pop_request()

    threads = [threading.Thread(target=run, args=(f"job-{n}", n)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"job-1": ("job-1", 1), "job-2": ("job-2", 2)}
