"""Celery task options a Celery user sets on the task itself, and Celery's solo pool.

Each was found broken from outside: a task's own ``priority`` and ``max_retries``
were ignored (every job got 50 and 3), an ``acks_late=False`` task was failed
while it ran, and under ``-P solo`` a job longer than the lease was started again
on another worker while it still ran."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import chain

from capability_router.errors import InvalidJob, QueueGaveUp
from conftest import wait_for
from emp_tasks.app import create_app
from emp_tasks.producer import get_job

#: Job types the workers import (``EMP_CELERY_CONFIG``); each logs its runs to Redis.
OPTION_JOBS = '''
import os
import time

import redis
from celery import shared_task


def log(name, request):
    redis.Redis.from_url(os.environ["EMP_REDIS_URL"]).rpush(
        "test:runs:" + request.id, f"{name}@{request.hostname}")


@shared_task(bind=True, name="test.flaky", service="echo", max_retries=2)
def flaky(self):
    log("flaky", self.request)
    raise self.retry(exc=RuntimeError("boom"), countdown=0)


@shared_task(bind=True, name="test.never_retry", service="echo", max_retries=0,
             autoretry_for=(RuntimeError,))
def never_retry(self):
    log("never_retry", self.request)
    raise RuntimeError("boom")


@shared_task(bind=True, name="test.autoretry_once", service="echo",
             autoretry_for=(RuntimeError,), retry_kwargs={"max_retries": 1, "countdown": 0})
def autoretry_once(self):
    log("autoretry_once", self.request)
    raise RuntimeError("boom")


@shared_task(bind=True, name="test.early_ack", service="echo", acks_late=False)
def early_ack(self, seconds):
    log("early_ack", self.request)
    time.sleep(seconds)
    return "done"


@shared_task(bind=True, name="test.returns_set", service="echo")
def returns_set(self):
    return {1, 2, 3}


@shared_task(bind=True, name="test.typed_args", service="echo")
def typed_args(self, when, ident):
    return [type(when).__name__, when.isoformat(), type(ident).__name__, str(ident)]


@shared_task(bind=True, name="test.crash", service="echo")
def crash(self):
    log("crash", self.request)
    os._exit(1)


@shared_task(bind=True, name="test.errback", service="echo")
def errback(self, failed_id):
    redis.Redis.from_url(os.environ["EMP_REDIS_URL"]).rpush("test:errbacks", failed_id)


@shared_task(name="test.double", service="echo")
def double(x):
    return 2 * x


@shared_task(bind=True, name="test.retry_elsewhere", service="echo")
def retry_elsewhere(self):
    raise self.retry(countdown=0, queue="gpu")


@shared_task(bind=True, name="test.replaced", service="echo")
def replaced(self):
    raise self.replace(double.s(21))


@shared_task(bind=True, name="test.ignored", service="echo")
def ignored(self):
    from celery.exceptions import Ignore
    raise Ignore("handled elsewhere")


@shared_task(bind=True, name="test.my_priority", service="echo")
def my_priority(self):
    return self.request.delivery_info.get("priority")


@shared_task(bind=True, name="test.retry_more", service="echo")
def retry_more(self):
    log("retry_more", self.request)
    if self.request.retries < 4:
        raise self.retry(exc=RuntimeError("again"), countdown=0, max_retries=5)
    return [self.request.retries, self.request.delivery_info.get("priority")]


@shared_task(bind=True, name="test.raise_limit_once", service="echo")
def raise_limit_once(self):
    log("raise_limit_once", self.request)
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError("first"), countdown=0, max_retries=5)
    raise self.retry(exc=RuntimeError("again"), countdown=0)


@shared_task(bind=True, name="test.long_sleep", service="echo")
def long_sleep(self, seconds):
    log("long_sleep", self.request)
    time.sleep(seconds)
    return "slept"
'''


@pytest.fixture
def options_env(jobs_env) -> dict[str, str]:  # noqa: ANN001
    return jobs_env("option_jobs", OPTION_JOBS)


def producer_task(app, name: str, **options):  # noqa: ANN001, ANN201 - a Celery task
    """The producer's side of a job type of ``OPTION_JOBS``: name, service, options."""
    def body(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Runs on the workers only."""
    return app.task(name=name, service="echo", shared=False, **options)(body)


@pytest.mark.fast
def test_a_tasks_own_priority_and_max_retries_reach_the_job(app) -> None:
    """Tried: jobs of tasks declaring ``priority=90``, ``max_retries=2``, ``0`` and
    ``None`` (Celery's "for ever"), submitted without those options, and one whose
    call names its own; before the fix every record said priority 50 and 3 retries."""
    urgent = producer_task(app, "test.urgent", priority=90, max_retries=2)
    never = producer_task(app, "test.never", max_retries=0)
    forever = producer_task(app, "test.forever", max_retries=None)
    plain = producer_task(app, "test.plain")

    record = get_job(urgent.apply_async().id, app=app)
    assert (record["priority"], record["max_retries"]) == (90, 2)
    assert get_job(never.apply_async().id, app=app)["max_retries"] == 0
    assert get_job(forever.apply_async().id, app=app)["max_retries"] == 100
    record = get_job(plain.apply_async().id, app=app)
    assert (record["priority"], record["max_retries"]) == (50, 3)  # Celery's own default
    record = get_job(urgent.apply_async(priority=20, max_retries=5).id, app=app)
    assert (record["priority"], record["max_retries"]) == (20, 5)  # the call wins


@pytest.mark.timeout(120)
def test_a_tasks_own_max_retries_bounds_its_runs(app, client: redis.Redis, start_worker,
                                                 options_env) -> None:
    """Tried: ``max_retries=2`` with ``self.retry`` and ``max_retries=0`` with
    ``autoretry_for``; before the fix the first ran 4 times and the second 4 times
    (the job's default of 3 retries replaced the task's)."""
    start_worker("w1", **options_env)
    # The producer declares the task as the worker's module does (a shared module).
    flaky = producer_task(app, "test.flaky", max_retries=2)
    never = producer_task(app, "test.never_retry", max_retries=0)
    for task, runs in ((flaky, 3), (never, 1)):
        result = task.apply_async()
        with pytest.raises(Exception, match="boom"):
            result.get(timeout=60)
        assert client.llen(f"test:runs:{result.id}") == runs, task.name
        record = get_job(result.id, app=app)
        assert record["status"] == "failed" and record["retries"] == runs - 1, record


@pytest.mark.timeout(120)
def test_early_ack_task_and_solo_pool_run_a_job_longer_than_the_lease_once(
        app, client: redis.Redis, start_worker, options_env) -> None:
    """Tried, with a 2 s lease: an ``acks_late=False`` task sleeping 5 s (before the
    fix it was failed 2-5 s in, "task ended without recording an outcome", and its
    result refused), and a 5 s job on a ``-P solo`` worker while a second worker waits
    (before the fix the lease lapsed and the second worker ran it again meanwhile)."""
    prefork = start_worker("w-prefork", **options_env)
    early = producer_task(app, "test.early_ack").apply_async(kwargs={"seconds": 5})
    assert early.get(timeout=60) == "done"
    record = get_job(early.id, app=app)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    prefork.stop()

    start_worker("w-solo", args=["-P", "solo"], **options_env)
    long = producer_task(app, "test.long_sleep").apply_async(kwargs={"seconds": 5})
    wait_for(lambda: get_job(long.id, app=app)["status"] == "in_progress", timeout=30,
             message="the solo worker to start the job")
    start_worker("w-other", **options_env)  # idle, and could take the job were it lost
    assert long.get(timeout=60) == "slept"
    record = get_job(long.id, app=app)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    assert record["worker_id"] == "w-solo"
    runs = client.lrange(f"test:runs:{long.id}", 0, -1)
    assert len(runs) == 1 and runs[0].startswith("long_sleep@w-solo@"), runs


@pytest.mark.fast
def test_a_naive_eta_is_utc_as_celery_reads_it(app, client, monkeypatch) -> None:
    """Tried, on a machine whose local time is New York's: ``eta=`` a naive UTC time a
    minute ahead (Celery reads a naive eta as UTC). Before the fix the job was due at
    that time read as New York's: five hours late."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        ahead = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=60)
        job = producer_task(app, "test.plain").apply_async(eta=ahead)
        due = client.zscore("emp:{default}:delayed", job.id)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert due is not None and abs(due / 1000 - (time.time() + 60)) < 10, due


@pytest.mark.fast
def test_payloads_are_json_as_celery_writes_it_and_never_nan_or_infinity(app, client) -> None:
    """Tried: arguments Celery's json serializer sends (a datetime, a UUID) were refused
    at submit ("payload must be JSON-serializable"); an infinite float was accepted and
    its record held a bare ``Infinity``, which no JSON reader of the record (the API's
    listing) can parse; one nested 5,000 deep raised a bare RecursionError. A set is refused
    as before; nothing is written for a refusal."""
    typed = producer_task(app, "test.typed_args")
    when, ident = datetime(2026, 12, 2, 9, 30), uuid.UUID(int=7)
    record = get_job(typed.apply_async(kwargs={"when": when, "ident": ident}).id, app=app)
    assert record["payload"]["when"] == {"__type__": "datetime",
                                         "__value__": "2026-12-02T09:30:00"}
    before = sorted(client.keys("*"))
    deep: object = 1
    for _ in range(5000):  # past the interpreter's stack: was a bare RecursionError
        deep = {"a": deep}
    for bad in (float("inf"), float("nan"), {1, 2}, deep):
        with pytest.raises(InvalidJob, match="payload must be JSON-serializable"):
            typed.apply_async(kwargs={"when": bad, "ident": 1})
    assert sorted(client.keys("*")) == before


@pytest.mark.timeout(120)
def test_typed_arguments_arrive_and_an_unstorable_result_fails_the_job(
        app, start_worker, options_env) -> None:
    """Tried: a datetime and a UUID argument (refused before; Celery delivers them as
    themselves); ``self.replace(...)``, which failed with a confusing InvalidJob "already
    exists", then with ReplaceUnsupported, and now refiles the job as the replacement's
    run (``test_task_replace.py``); and a task returning a set, which Celery's
    json result backend cannot store: Celery said FAILURE while the job record said
    ``completed``. And ``self.retry(queue="gpu")``, a retry into another pool: the job
    ended failed with "the task raised Ignore (... attempt 1 was taken away)" and no
    Celery result, so ``get()`` waited for ever; now it fails saying why."""
    start_worker("w1", **options_env)
    when, ident = datetime(2026, 12, 2, 9, 30), uuid.UUID(int=7)
    typed = producer_task(app, "test.typed_args").apply_async(
        kwargs={"when": when, "ident": ident})
    assert typed.get(timeout=60) == ["datetime", "2026-12-02T09:30:00", "UUID", str(ident)]
    replaced = producer_task(app, "test.replaced").apply_async()
    assert replaced.get(timeout=60) == 42  # before: ReplaceUnsupported (InvalidJob before)
    assert get_job(replaced.id, app=app)["replaced"][0]["to_task"] == "test.double"
    ignored = producer_task(app, "test.ignored").apply_async()
    wait_for(lambda: get_job(ignored.id, app=app)["status"] == "failed", timeout=30,
             message="the ignored job to end")
    assert "the task raised Ignore (handled elsewhere)" in get_job(ignored.id, app=app)[
        "last_error"]  # before: "task ended without recording an outcome (... crash)"
    moved = producer_task(app, "test.retry_elsewhere").apply_async()
    with pytest.raises(InvalidJob, match="a retry stays in the job's pool 'default'"):
        moved.get(timeout=30)  # before: no result ever stored (get() waited for ever)
    assert "InvalidJob" in get_job(moved.id, app=app)["last_error"]  # before: "raised Ignore"
    unstorable = producer_task(app, "test.returns_set").apply_async()
    with pytest.raises(Exception, match="not JSON serializable"):
        unstorable.get(timeout=60)
    record = get_job(unstorable.id, app=app)
    assert record["status"] == "failed" and "EncodeError" in record["last_error"], record


@pytest.mark.timeout(120)
def test_map_starmap_and_chunks_run_as_jobs_of_the_mapped_task(
        app, start_worker, options_env) -> None:
    """Tried: Celery's ``task.map``, ``task.starmap`` and ``task.chunks`` of a job type.
    Before the fix their jobs were filed under Celery's built-in task names
    (``celery.map``, ``celery.starmap``) as services, which no worker serves: pending
    for ever, ``get()`` timed out."""
    start_worker("w1", **options_env)
    double = producer_task(app, "test.double")
    mapped = double.map([1, 2]).apply_async()
    assert mapped.get(timeout=30) == [2, 4]
    assert get_job(mapped.id, app=app)["service_required"] == "echo"
    assert double.starmap([(3,), (4,)]).apply_async().get(timeout=30) == [6, 8]
    assert double.chunks([(5,), (6,), (7,)], 2).apply_async().get(timeout=30) == [[10, 12],
                                                                                   [14]]


@pytest.mark.timeout(120)
def test_a_job_the_queue_gives_up_on_fails_in_the_result_backend(
        app, client: redis.Redis, start_worker, options_env) -> None:
    """Tried: a task that kills its pool process (``os._exit``) every run, with at most 2
    attempts, first step of a chain with a ``link_error``. Celery rejects the lost run
    (requeue) and stores nothing, so when the queue gave up the record said failed while
    ``AsyncResult.get()`` waited for ever. Then the failure was stored without the job's
    request: the chain's last step stayed PENDING (``app.AsyncResult(its id).get()``, in
    a process that does not hold the chain, waited for ever) and the errback never ran,
    where Celery fails the chain and calls it for a lost run."""
    start_worker("w1", EMP_MAX_ATTEMPTS="2", **options_env)
    last = chain(producer_task(app, "test.crash").s(),
                 producer_task(app, "test.long_sleep").si(0)).apply_async(
        link_error=producer_task(app, "test.errback").s())
    result = last.parent
    with pytest.raises(QueueGaveUp, match="gave up after 2 attempts"):
        last.get(timeout=30)
    assert app.AsyncResult(last.id).state == "FAILURE"  # not PENDING for ever
    assert result.state == "FAILURE" and isinstance(result.result, QueueGaveUp)
    wait_for(lambda: client.lrange("test:errbacks", 0, -1) == [result.id], timeout=30,
             message="the chain's errback to run once with the failed job's id")
    record = get_job(result.id, app=app)
    assert record["status"] == "failed" and client.llen(f"test:runs:{result.id}") == 2
    assert client.llen("emp:{default}:gave-up") == 0  # reported, not left behind


def test_celerys_task_routes_name_the_jobs_pool(redis_server, client) -> None:
    """Tried: a producer whose Celery config routes tasks (``task_routes``: a mapping by
    name or glob, and a router function) to queue gpu. Before the fix the routes were
    passed over and every job was filed in pool default."""
    def by_function(name, args, kwargs, options, task=None, **kw):  # noqa: ANN001, ANN202
        return "gpu" if name == "test.routed_by_function" else None

    for routes in ({"test.routed*": {"queue": "gpu"}}, [by_function]):
        app = create_app(redis_server.url, task_routes=routes)
        routed = producer_task(app, "test.routed_by_function")
        plain = producer_task(app, "test.plain")
        assert get_job(routed.apply_async().id, app=app)["pool"] == "gpu"
        assert get_job(app.send_task("test.routed_by_function").id, app=app)["pool"] == "gpu"
        assert get_job(plain.apply_async().id, app=app)["pool"] == "default"
        assert get_job(routed.apply_async(pool="cpu").id, app=app)["pool"] == "cpu"  # call wins
        app.close()


def test_celerys_purge_cancels_the_pending_jobs(app, client) -> None:
    """Tried: ``app.control.purge()`` (what ``celery purge`` calls) with three jobs pending,
    one of them due later (``countdown``). Before the fix it answered 0 and removed
    nothing: every job ran afterwards. Now each ends cancelled, and a job submitted
    after the purge stays pending."""
    task = producer_task(app, "test.purged")
    waiting = [task.apply_async(), task.apply_async(), task.apply_async(countdown=60)]
    assert app.control.purge() == 3
    for result in waiting:
        record = get_job(result.id, app=app)
        assert record["status"] == "cancelled" and "purge" in record["last_error"], record
    assert app.control.purge() == 0
    assert get_job(task.apply_async().id, app=app)["status"] == "pending"


@pytest.mark.timeout(120)
def test_a_run_sees_its_jobs_priority_and_the_record_its_retry_limit(
        app, client: redis.Redis, start_worker, options_env) -> None:
    """Tried: a job submitted with ``priority=80`` returning
    ``self.request.delivery_info["priority"]``, and a job of a task with Celery's default
    ``max_retries`` (3) retrying 4 times with ``self.retry(max_retries=5)``. Before the fix
    the run saw priority 0 (Celery gives the message's priority), and the record (GET
    /api/jobs/<id>, ``emp job``) said ``max_retries`` 3 though the job ran 5 times."""
    start_worker("w1", **options_env)
    my_priority = producer_task(app, "test.my_priority")
    assert my_priority.apply_async(priority=80).get(timeout=30) == 80
    assert my_priority.apply_async().get(timeout=30) == 50  # the job's own default
    result = producer_task(app, "test.retry_more").apply_async(priority=70)
    assert result.get(timeout=30) == [4, 70]  # a retried run too
    record = get_job(result.id, app=app)
    assert (record["max_retries"], record["retries"]) == (5, 4)
    assert client.llen(f"test:runs:{result.id}") == 5


@pytest.mark.timeout(120)
def test_a_raised_retry_limit_holds_for_the_jobs_later_retries(
        app, client: redis.Redis, start_worker, options_env) -> None:
    """Tried: a job of a task with Celery's default ``max_retries`` (3) whose first run
    calls ``self.retry(max_retries=5)`` and every later run a plain ``self.retry()``.
    Celery allows a retry while ``retries + 1 <= max_retries``: 5 retries, 6 runs. Before
    the fix the later runs read the message's limit (3) again: the job ran 4 times and
    failed while its record said ``max_retries`` 5."""
    start_worker("w1", **options_env)
    result = producer_task(app, "test.raise_limit_once").apply_async()
    with pytest.raises(RuntimeError, match="again"):
        result.get(timeout=60)
    assert client.llen(f"test:runs:{result.id}") == 6
    record = get_job(result.id, app=app)
    assert (record["status"], record["max_retries"], record["retries"]) == ("failed", 5, 5)


@pytest.mark.timeout(120)
def test_autoretrys_retry_kwargs_limit_is_the_records_from_the_submit(
        app, client: redis.Redis, start_worker, options_env) -> None:
    """Tried: a task with ``autoretry_for=(RuntimeError,)`` and
    ``retry_kwargs={"max_retries": 1}`` (Celery's autoretry passes them to every retry
    it makes), submitted with no limit of its own. Before the fix the record (GET
    /api/jobs/<id>, ``emp job``) said ``max_retries`` 3, Celery's default, from the submit
    until the first retry wrote 1; a job waiting for its first run showed 3. Now it says
    1 from the submit, and the job runs twice (one retry) and fails, still saying 1. A
    call naming its own ``max_retries`` keeps it in the record."""
    options = {"autoretry_for": (RuntimeError,),
               "retry_kwargs": {"max_retries": 1, "countdown": 0}}
    task = producer_task(app, "test.autoretry_once", **options)
    result = task.apply_async()
    assert get_job(result.id, app=app)["max_retries"] == 1
    assert get_job(task.apply_async(max_retries=4).id, app=app)["max_retries"] == 4
    plain = producer_task(app, "test.plain_retry_kwargs", retry_kwargs={"max_retries": 1})
    assert get_job(plain.apply_async().id, app=app)["max_retries"] == 3  # no autoretry
    start_worker("w1", **options_env)
    with pytest.raises(RuntimeError, match="boom"):
        result.get(timeout=60)
    assert client.llen(f"test:runs:{result.id}") == 2
    record = get_job(result.id, app=app)
    assert (record["status"], record["max_retries"], record["retries"]) == ("failed", 1, 1)
