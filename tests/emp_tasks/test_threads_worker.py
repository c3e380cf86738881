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
    job_ids = [producer.submit("simulation", {"steps": 8, "duration": 8.0}, app=app).id
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
