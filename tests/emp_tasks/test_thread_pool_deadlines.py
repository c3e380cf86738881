"""Hard time limits under ``-P threads`` kept by one scheduler thread per pool, not a
``threading.Timer`` thread per run."""

from __future__ import annotations

import threading
import time

import pytest
from test_threads_worker import statuses, thread_count

from conftest import wait_for
from emp_tasks.deadlines import Deadlines
from emp_tasks.thread_pool import TaskPool

JOBS = 20


@pytest.mark.timeout(120)
def test_20_time_limited_jobs_hold_one_deadline_thread_not_20(app, start_worker) -> None:
    """Tried: 20 simulation jobs of one 60 s step, each sent with ``time_limit=120``, on a
    ``-P threads -c 20`` worker. Each run started its own ``threading.Timer``: the process
    held 20 pool threads and 20 Timer threads more than when idle (a ``-c 300`` worker,
    300 more). Now one deadline thread serves the pool."""
    worker = start_worker("w-deadlines", args=["-P", "threads", "-c", str(JOBS)],
                          WORKER_SERVICES="simulation")
    idle_threads = thread_count(worker.process.pid)
    job_ids = [app.send_task("emp.simulation", kwargs={"steps": 1, "duration": 60.0},
                             time_limit=120).id for _ in range(JOBS)]
    wait_for(lambda: statuses(app, job_ids).count("in_progress") == JOBS, timeout=60,
             every=0.5, message=f"{JOBS} jobs running")
    busy_threads = thread_count(worker.process.pid)
    # the pool's JOBS threads, one deadline thread, a little slack; not 2 x JOBS
    assert busy_threads <= idle_threads + JOBS + 3, (idle_threads, busy_threads)


def _pool(limit: int) -> TaskPool:
    pool = TaskPool(limit=limit)
    pool.start()
    return pool


def _run(pool: TaskPool, release: threading.Event, timeout: float,
         timeouts: list[tuple[bool, float]]):  # noqa: ANN202 - Celery's ApplyResult
    return pool.apply_async(release.wait, (30,), timeout=timeout,
                            timeout_callback=lambda soft, t: timeouts.append((soft, t)))


@pytest.mark.timeout(60)
def test_the_pool_keeps_every_deadline_on_one_thread() -> None:
    """Tried: 20 runs with a 30 s hard limit applied to the pool in this process:
    ``threading.active_count()`` rose by 40 (20 runs, 20 Timers). Now by 21."""
    pool = _pool(JOBS)
    release, timeouts = threading.Event(), []
    before = threading.active_count()
    try:
        for _ in range(JOBS):
            _run(pool, release, 30.0, timeouts)
        wait_for(lambda: len(pool.executor._threads) == JOBS, message="all runs started")
        assert threading.active_count() - before <= JOBS + 1
    finally:
        release.set()
        pool.stop()
    assert timeouts == []


@pytest.mark.timeout(60)
def test_a_deadline_fires_for_a_run_still_going_and_is_dropped_for_one_that_ended() -> None:
    """A run past its limit gets ``timeout_callback(False, limit)``, once; a run that ended
    first gets nothing and its deadline is gone; the pool's stop ends the scheduler."""
    pool = _pool(2)
    slow, quick = threading.Event(), threading.Event()
    slow_timeouts: list[tuple[bool, float]] = []
    quick_timeouts: list[tuple[bool, float]] = []
    try:
        _run(pool, slow, 0.5, slow_timeouts)
        quick_run = _run(pool, quick, 0.6, quick_timeouts)
        quick.set()
        quick_run.wait(5)
        wait_for(lambda: slow_timeouts, timeout=5, message="the slow run's deadline")
        time.sleep(0.5)
        assert slow_timeouts == [(False, 0.5)] and quick_timeouts == []
        assert pool.deadlines.pending() == 0
        scheduler = pool.deadlines.thread
        assert scheduler is not None and scheduler.is_alive()
    finally:
        slow.set()
        pool.stop()
    scheduler.join(5)
    assert not scheduler.is_alive()


@pytest.mark.timeout(30)
def test_a_failing_call_leaves_the_other_deadlines_and_dropped_ones_are_not_kept() -> None:
    """A Timer thread per run failed alone; the one scheduler must outlive a failing call.
    Deadlines dropped long before they come (short runs under a 1 h limit) must not pile
    up holding their calls (each holds a Celery request) until their hour is up."""
    deadlines = Deadlines()
    fired = threading.Event()
    try:
        deadlines.call_after(0.05, lambda: 1 / 0)
        deadlines.call_after(0.1, fired.set)
        assert fired.wait(5)
        for _ in range(10_000):
            deadlines.drop(deadlines.call_after(3600, fired.set))
        # compaction runs when a push leaves more than 2 x live + 64 entries; at each push
        # one deadline (the one just pushed) is live, so at most 2 + 64 stale ones stay
        assert deadlines.pending() == 0 and len(deadlines._heap) <= 2 * 1 + 64
    finally:
        deadlines.stop()
