"""Handing back a dead worker process's jobs (``machine.handback``), against a real Redis.

The machine calls it when supervisord says a worker exited unexpectedly; the
process supervisor starts next has the same worker id, so the fence is the time:
only jobs assigned before the exit are the dead process's.
"""

from __future__ import annotations

import redis
from machine_helpers import wait_until
from test_machine_reaper import running_job

from capability_router.functions import QueueFunctions, redis_now_ms
from machine.handback import hand_back_jobs

REASON = "worker process exited (terminated by SIGKILL)"


def job(client: redis.Redis, job_id: str) -> dict[str, str]:
    return client.hgetall(QueueFunctions(client, "default").keys.job(job_id))


def test_only_the_dead_processs_jobs_go_back_and_the_attempt_counts(
        client: redis.Redis) -> None:
    """Tried: worker ``m1-w`` holds a job claimed before its process died and one its
    next process (same worker id) claimed after; ``m2-w`` holds a third. Only the first
    goes back to pending, as lease expiry would return it (``job_requeued``, the attempt
    counted: with ``max_attempts`` 1 it fails instead); a second call changes nothing."""
    running_job(client, "j-old", "m1")
    cutoff = int(job(client, "j-old")["assigned_at"]) + 1
    wait_until(lambda: redis_now_ms(client) > cutoff, message="Redis's clock to pass the cutoff")
    running_job(client, "j-new", "m1")  # the next process of m1-w
    running_job(client, "j-other", "m2")
    running_job(client, "j-spent", "m3")

    assert hand_back_jobs(client, "m1-w", cutoff, REASON) == ["j-old"]
    old = job(client, "j-old")
    assert old["status"] == "pending" and old["last_error"] == REASON, old
    assert old["requeued_attempt"] == "1", old
    assert job(client, "j-new")["status"] == "in_progress"
    assert job(client, "j-other")["status"] == "in_progress"
    assert hand_back_jobs(client, "m1-w", cutoff, REASON) == []

    QueueFunctions(client, "default").configure(max_attempts=1)
    assert hand_back_jobs(client, "m3-w", redis_now_ms(client) + 1, REASON) == ["j-spent"]
    spent = job(client, "j-spent")
    assert spent["status"] == "failed", spent
    assert spent["last_error"] == f"{REASON}; gave up after 1 attempts", spent
