"""A thread-pool worker (``emp worker -P threads``) with more jobs inside Redis calls at
once than redis-py 8's default pool of 100 connections allows."""

from __future__ import annotations

import time

import pytest
import redis

from conftest import wait_for
from emp_tasks import producer

#: 64 threads report progress on connections of their own (``functions.held_connection``);
#: the other 136 share the client's pool.
JOBS = 200


def statuses(app, job_ids: list[str]) -> list[str]:  # noqa: ANN001 - Celery app
    return [producer.get_job(job_id, app=app)["status"] for job_id in job_ids]


@pytest.mark.timeout(240)
def test_200_running_jobs_ride_out_a_redis_pause_without_a_failure(
        app, client: redis.Redis, start_worker) -> None:
    # Tried: 200 simulation jobs running at once in one threads worker, then Redis
    # paused for writes for 1.5 s (as a fork or a slow command does), so every job's
    # next progress report waits in its own connection. redis-py 8's pool refused the
    # 101st ("MaxConnectionsError: Too many connections") and the jobs were rejected.
    worker = start_worker("w-threads", args=["-P", "threads", "-c", str(JOBS + 10)],
                          WORKER_SERVICES="simulation")
    job_ids = [producer.submit("simulation", {"steps": 15, "duration": 15.0}, app=app).id
               for _ in range(JOBS)]
    wait_for(lambda: statuses(app, job_ids).count("in_progress") == JOBS, timeout=60,
             every=0.5, message=f"{JOBS} jobs running at once")
    # A job reports every second: each one's next report meets the 1.5 s pause.
    client.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    time.sleep(1.5)
    wait_for(lambda: set(statuses(app, job_ids)) == {"completed"}, timeout=90, every=0.5,
             message="every job completed")
    for job_id in job_ids:
        record = producer.get_job(job_id, app=app)
        # none was rejected and run again
        assert record["attempts"] == 1, (job_id, record.get("last_error"))
    log = worker.log_path.read_text()
    assert "Too many connections" not in log and "requeued" not in log, log[-3000:]


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


@pytest.mark.timeout(120)
def test_one_watcher_thread_stops_the_cancelled_jobs_among_40_silent_ones(
        app, start_worker) -> None:
    # Tried: 40 simulation jobs of one 60 s step (no progress report to notice a cancel
    # by) in one threads worker; 4 of them cancelled. The process's one watcher stops
    # those 4 within seconds and leaves the other 36 running. A watcher thread per job
    # held 40 threads more than the pool's own.
    jobs = 40
    worker = start_worker("w-watch", args=["-P", "threads", "-c", str(jobs)],
                          WORKER_SERVICES="simulation")
    idle_threads = thread_count(worker.process.pid)
    results = [producer.submit("simulation", {"steps": 1, "duration": 60.0}, app=app)
               for _ in range(jobs)]
    job_ids = [result.id for result in results]
    wait_for(lambda: statuses(app, job_ids).count("in_progress") == jobs, timeout=60,
             every=0.5, message=f"{jobs} jobs running")
    busy_threads = thread_count(worker.process.pid)
    assert busy_threads <= idle_threads + jobs + 5, (idle_threads, busy_threads)  # not 2 x jobs
    for job_id in job_ids[:4]:
        producer.cancel(job_id, app=app)
    # REVOKED is the run's own end (the record says cancelled at once, whatever the run does).
    wait_for(lambda: [r.state for r in results[:4]] == ["REVOKED"] * 4, timeout=15,
             message="the 4 cancelled runs to stop")
    assert {r.state for r in results[4:]} == {"STARTED"}
    assert statuses(app, job_ids[4:]) == ["in_progress"] * (jobs - 4)


@pytest.mark.timeout(120)
def test_a_hard_time_limit_fails_the_job_under_threads(app, start_worker) -> None:
    """Tried: a 20 s simulation job with ``apply_async(time_limit=2)`` on a ``-P threads``
    worker. Celery's thread pool ignores time limits without a word: ``get()`` returned
    the result after 20 s and the job ended ``completed``. Now, as under prefork, the job
    fails with TimeLimitExceeded at its limit (its thread, which cannot be killed, runs
    on to its end and records nothing)."""
    start_worker("w-limit", args=["-P", "threads", "-c", "2"], WORKER_SERVICES="simulation")
    result = app.send_task("emp.simulation", kwargs={"steps": 20, "duration": 20.0},
                           time_limit=2)
    with pytest.raises(Exception, match="TimeLimitExceeded|Time ?limit"):
        result.get(timeout=60)
    record = producer.get_job(result.id, app=app)
    assert record["status"] == "failed" and "hard time limit (2" in record["last_error"], record
