"""Real Celery worker processes claiming through the capability transport."""

from __future__ import annotations

import time

import pytest
from kombu import Queue

from capability_router.errors import InvalidJob
from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks.job_types import job_type
from emp_tasks.producer import cancel, get_job, job_events, submit


def status_of(app, job_id: str) -> str:
    return get_job(job_id, app=app)["status"]


def test_job_runs_end_to_end_with_progress(app, start_worker) -> None:
    start_worker("w1")
    result = submit("simulation", {"steps": 4, "duration": 0.4}, app=app)
    assert result.get(timeout=30)["steps"] == 4
    history = job_events(result.id, app=app)
    events = [e["event"] for e in history]
    assert events[:3] == ["job_submitted", "job_assigned", "job_started"]
    assert events.count("update_job_progress") == 4 and events[-1] == "complete_job"
    assert {e["data"]["worker_id"] for e in history[1:]} == {"w1"}
    assert [e["data"]["progress"] for e in history if e["event"] == "update_job_progress"] == [
        25, 50, 75, 100]
    record = get_job(result.id, app=app)
    assert record["status"] == "completed" and record["worker_id"] == "w1"
    assert record["progress"] == 100 and record["result"]["steps"] == 4


def test_retries_wait_in_redis_then_succeed(app, client, start_worker) -> None:
    start_worker("w1")
    result = submit("echo", {"fail_times": 2}, app=app)
    # retry_backoff=1: the first retry waits about 1 s, in Redis's delayed set.
    wait_for(lambda: client.zscore(Keys("default").delayed, result.id) is not None,
             timeout=20, message="the job to wait in the delayed set")
    assert status_of(app, result.id) == "pending"
    assert result.get(timeout=30)["retries"] == 2
    record = get_job(result.id, app=app)
    assert record["status"] == "completed" and record["retries"] == 2
    assert record["attempts"] == 3
    events = [e["event"] for e in job_events(result.id, app=app)]
    assert events.count("job_retrying") == 2


def test_max_retries_exhausted_ends_failed(app, start_worker) -> None:
    start_worker("w1")
    result = submit("echo", {"fail_times": 5}, max_retries=1, app=app)
    wait_for(lambda: status_of(app, result.id) == "failed", timeout=30, message="failure")
    record = get_job(result.id, app=app)
    assert record["attempts"] == 2 and "EchoFailure" in record["last_error"]


def test_a_jobs_max_retries_does_not_carry_over_to_the_next_job(app, start_worker) -> None:
    """Tried: a job with max_retries=0 fails, then a job of the same type that fails once
    runs in the same pool process. Celery keeps a retry's max_retries on the shared task
    object (override_max_retries) after a retry that gave up; the next job used to fail at
    once instead of retrying."""
    start_worker("w1")
    first = submit("echo", {"fail_times": 1}, max_retries=0, app=app)
    wait_for(lambda: status_of(app, first.id) == "failed", timeout=30, message="failure")
    second = submit("echo", {"fail_times": 1}, app=app)
    assert second.get(timeout=30)["retries"] == 1
    assert get_job(second.id, app=app)["status"] == "completed"


def test_cancelled_pending_job_never_runs(app, start_worker) -> None:
    result = submit("echo", {"x": 1}, app=app)
    assert cancel(result.id, app=app) == "cancelled"
    start_worker("w1")
    follow_up = submit("echo", {"x": 2}, app=app)
    follow_up.get(timeout=30)
    record = get_job(result.id, app=app)
    assert record["status"] == "cancelled" and record["attempts"] == 0


def test_cancel_of_running_job_reaches_the_task(app, start_worker) -> None:
    start_worker("w1")
    result = submit("echo", {"sleep": 30}, app=app)
    wait_for(lambda: status_of(app, result.id) == "in_progress", timeout=30, message="start")
    started = time.monotonic()
    assert cancel(result.id, app=app) == "cancelled"
    # The worker is free again once the task noticed: the next job completes quickly.
    submit("echo", {"x": 1}, app=app).get(timeout=15)
    assert time.monotonic() - started < 15
    assert status_of(app, result.id) == "cancelled"


def test_sigkilled_workers_job_completed_by_another_within_two_leases(
        app, client, start_worker) -> None:
    lease = 2.0  # EMP_LEASE_SECONDS of the test workers
    doomed = start_worker("doomed")
    result = submit("echo", {"sleep": 6}, app=app)
    wait_for(lambda: status_of(app, result.id) == "in_progress", timeout=30, message="start")
    start_worker("survivor")
    doomed.kill()
    killed_at = time.monotonic()
    wait_for(lambda: get_job(result.id, app=app).get("worker_id") == "survivor",
             timeout=3 * lease, message="the survivor to claim the job")
    reclaimed_after = time.monotonic() - killed_at
    result.get(timeout=30)
    record = get_job(result.id, app=app)
    print(f"job back on a live worker {reclaimed_after:.2f}s after SIGKILL (lease {lease}s)")
    assert record["status"] == "completed" and record["attempts"] == 2
    assert reclaimed_after <= 2 * lease


def test_redis_restart_loses_no_accepted_job(app, redis_server, start_worker) -> None:
    ids = [submit("echo", {"n": n}, app=app).id for n in range(40)]
    redis_server.restart(kill=True)  # SIGKILL: only the append-only file survives
    start_worker("after-restart")
    wait_for(lambda: all(status_of(app, i) == "completed" for i in ids), timeout=60,
             message="all jobs accepted before the restart to complete")


@pytest.mark.parametrize("plain_celery", [False, True], ids=["emp-worker", "celery-worker"])
def test_a_worker_that_loses_redis_says_so_without_celerys_deprecation_warning(
        app, redis_server, start_worker, plain_celery: bool) -> None:
    """Tried: a running worker whose Redis is killed and started again, then a job. Before:
    each loss of the broker printed Celery's 8-line CPendingDeprecationWarning about
    ``worker_cancel_long_running_tasks_on_connection_loss`` beside Celery's own line.
    EMP sets it, False: a running job goes on through a short outage under its lease
    (the fence refuses its outcome if the lease lapsed and the job ran elsewhere), rather
    than being cancelled and run again. The worker (``emp worker``, or ``celery -A
    emp_tasks.app worker``) reconnects and takes the job."""
    worker = start_worker("loses-redis", plain_celery=plain_celery)
    redis_server.restart(kill=True)
    result = submit("echo", {"n": 1}, app=app)
    result.get(timeout=60)
    log = worker.log_path.read_text(errors="replace")
    assert "Connection to broker lost" in log, log[-3000:]
    assert "CPendingDeprecationWarning" not in log, log[-3000:]


def test_model_requirement_goes_to_the_worker_that_has_the_model(app, start_worker) -> None:
    start_worker("has-sd15", WORKER_MODELS="sd15")
    start_worker("has-flux", WORKER_MODELS="echo:flux")
    results = [submit("echo", {"n": n}, requirements={"models": ["flux"]}, app=app)
               for n in range(5)]
    for result in results:
        result.get(timeout=30)
        assert get_job(result.id, app=app)["worker_id"] == "has-flux"


@pytest.mark.parametrize("service", ["a1111", "no such service"])
def test_unknown_service_is_refused_before_anything_is_written(app, client, service) -> None:
    from capability_router.errors import InvalidJob

    before = sorted(client.keys("*"))
    with pytest.raises(InvalidJob, match="unknown service"):
        submit(service, {"x": 1}, app=app)
    assert sorted(client.keys("*")) == before


def test_job_in_another_pool_runs_only_on_that_pools_workers(app, start_worker) -> None:
    start_worker("default-only")
    gpu_pool = start_worker("gpu-pool", wait=False, args=["-Q", "gpu"])
    gpu_pool.wait_ready(namespace="gpu")
    result = submit("echo", {"x": 1}, pool="gpu", app=app)
    result.get(timeout=30)
    record = get_job(result.id, app=app)  # found without naming the pool
    assert record["pool"] == "gpu" and record["worker_id"] == "gpu-pool"


def test_celerys_queue_option_names_the_jobs_pool(app, start_worker) -> None:
    """Tried: Celery's ``apply_async(queue="gpu")``, ``send_task(..., queue="gpu")`` and
    ``queue=Queue("gpu")``, a worker serving pool gpu. Before the fix the job
    was filed in namespace gpu while its record said pool default: no worker of pool
    gpu ever got it (``get`` timed out) and ``cancel`` answered JobNotFound; a task declared
    with ``queue="video"`` is filed, and cancelled, in pool video. A ``pool=``
    that names another pool than ``queue=`` is refused."""
    gpu_pool = start_worker("gpu-pool", wait=False, args=["-Q", "gpu"])
    gpu_pool.wait_ready(namespace="gpu")
    echo = job_type(app, "emp.echo")

    # A pool no worker serves: the job stays pending (in gpu, the gpu worker would claim
    # it and fail it, the task not being registered there, racing the cancel below).
    @app.task(name="test.video_echo", service="echo", queue="video", shared=False)
    def declared() -> None:
        """Runs on no worker here: it is cancelled pending."""
    results = [echo.apply_async(kwargs={"x": 1}, queue="gpu"),
               app.send_task("emp.echo", kwargs={"x": 2}, queue="gpu"),
               echo.apply_async(kwargs={"x": 3}, queue=Queue("gpu"))]
    for n, result in enumerate(results, 1):
        assert result.get(timeout=30)["echo"] == {"x": n}
        record = get_job(result.id, app=app)
        assert record["pool"] == "gpu" and record["worker_id"] == "gpu-pool", record
    pending = declared.apply_async()
    assert get_job(pending.id, app=app)["pool"] == "video"
    assert cancel(pending.id, app=app) == "cancelled"
    with pytest.raises(InvalidJob, match="queue"):
        echo.apply_async(kwargs={"x": 4}, queue="gpu", pool="default")


def test_celery_remote_control_reaches_emp_workers(app, start_worker) -> None:
    """Fanout (pidbox) stays kombu's: `celery inspect` and Flower see the workers."""
    start_worker("inspectable")
    replies = app.control.inspect(timeout=10, limit=1).ping() or {}
    assert any(name.startswith("inspectable@") for name in replies), replies
    registered = app.control.inspect(timeout=10, limit=1).registered() or {}
    tasks = next(v for k, v in registered.items() if k.startswith("inspectable@"))
    assert "emp.echo" in tasks and "emp.simulation" in tasks


@pytest.mark.parametrize("env", [{}, {"EMP_CONNECTOR": "simulation"}], ids=["plain", "gated"])
def test_inspect_stats_answers(app, start_worker, env) -> None:
    """Tried: ``celery inspect stats`` (Flower asks it for its worker pages) of a worker,
    and of one whose connector gates its claims. Before the fix neither answered: the
    reply holds the broker's transport options, where the worker keeps a callback and
    its claim gate, and encoding it failed ("Object of type partial is not JSON
    serializable", logged by the worker)."""
    start_worker("statsy", **env)
    stats = app.control.inspect(timeout=10, limit=1).stats() or {}
    worker = next((v for k, v in stats.items() if k.startswith("statsy@")), None)
    assert worker is not None, stats
    assert worker["broker"]["transport"] == "capability_router.transport:Transport"
    assert worker["pool"]["max-concurrency"] == 1


def test_time_limits_end_jobs_failed_with_the_reason(app, start_worker) -> None:
    start_worker("w1")
    soft = submit("echo", {"sleep": 10}, soft_time_limit=1, app=app)
    hard = submit("echo", {"sleep": 10}, time_limit=1, app=app)
    wait_for(lambda: status_of(app, soft.id) == "failed" and status_of(app, hard.id) == "failed",
             timeout=30, message="both time-limited jobs to fail")
    assert "SoftTimeLimitExceeded" in get_job(soft.id, app=app)["last_error"]
    assert "hard time limit" in get_job(hard.id, app=app)["last_error"]


def test_a_hard_time_limit_is_on_the_job_record_when_get_raises(app, start_worker) -> None:
    """Tried: a job with ``time_limit=1`` that sleeps 10 s, waited on with
    ``AsyncResult.get()``, and the record read the moment ``get()`` raised
    ``TimeLimitExceeded``. Before, Celery stored the FAILURE first and the record learnt
    of it from the run's acknowledgement, which rides on the worker's next claim: it
    still said ``in_progress`` (0.16 s measured). Every other outcome is recorded before
    the result is stored; the killed run's now is too, once (one ``job_failed``)."""
    from celery.exceptions import TimeLimitExceeded

    start_worker("w1")
    for _ in range(3):  # the lag was a race: more than one try to see it
        hard = submit("echo", {"sleep": 10}, time_limit=1, app=app)
        with pytest.raises(TimeLimitExceeded):
            hard.get(timeout=30)
        record = get_job(hard.id, app=app)
        assert record["status"] == "failed", record
        assert "hard time limit (1 s) exceeded" in record["last_error"]
    time.sleep(1.5)  # the acknowledgement has come by now: it adds nothing
    events = [e["event"] for e in job_events(hard.id, app=app)]
    assert events.count("job_failed") == 1 and events[-1] == "job_failed", events
