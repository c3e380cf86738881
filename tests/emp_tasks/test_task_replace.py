"""Celery's ``Task.replace`` inside a job: the same job is refiled as the replacement's run.

Before, a job's ``self.replace(sig)`` failed it with ``ReplaceUnsupported`` (and before
that with a confusing "already exists"): Celery files the replacement under the job's
own id, which EMP files once."""

from __future__ import annotations

import json

import pytest
import redis
from celery import chain, chord

from capability_router.functions import QueueFunctions
from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks.producer import get_job
from emp_tasks.websocket_client import WebSocketClient

#: Job types the workers import (``EMP_CELERY_CONFIG``).
REPLACE_JOBS = '''
import os
import time

import redis
from celery import group, shared_task


def client():
    return redis.Redis.from_url(os.environ["EMP_REDIS_URL"], decode_responses=True)


@shared_task(name="test.double", service="echo")
def double(x):
    return 2 * x


@shared_task(name="test.add", service="echo")
def add(x, y):
    return x + y


@shared_task(name="test.total", service="echo")
def total(values):
    return sum(values)


@shared_task(name="test.tagged", service="simulation", priority=10, max_retries=7)
def tagged(x, y):
    return {"sum": x + y}


@shared_task(name="test.on_gpu", service="gpu-only")
def on_gpu(x):
    return x


@shared_task(bind=True, name="test.replace_with", service="echo")
def replace_with(self, target, args):
    client().rpush("test:replacing:" + self.request.id, self.job.attempt)
    raise self.replace(self.app.signature(target, args=args))


@shared_task(bind=True, name="test.replace_after_go", service="echo")
def replace_after_go(self):
    """Attempt 1 waits for test:go, then replaces itself; a later attempt returns."""
    if self.job.attempt > 1:
        return "ran again"
    client().rpush("test:waiting", self.request.id)
    deadline = time.monotonic() + 90
    while not client().get("test:go") and time.monotonic() < deadline:
        time.sleep(0.05)
    raise self.replace(double.s(21))


@shared_task(bind=True, name="test.replace_naming", service="echo")
def replace_naming(self, **options):
    raise self.replace(double.s(1).set(**options))


@shared_task(name="test.gpu_queued", service="echo", queue="gpu")
def gpu_queued(x):
    return x


@shared_task(name="test.gpu_routed", service="echo")
def gpu_routed(x):
    """task_routes sends it to gpu, in the test that says so."""
    return x


@shared_task(bind=True, name="test.replace_with_group", service="echo")
def replace_with_group(self):
    raise self.replace(group(double.s(1), double.s(2)))


def note_retries(task):
    """Push "<task> <request.retries> <the record's retries>" for the test to read."""
    record = client().hget("emp:{default}:job:" + task.request.id, "retries")
    client().rpush("test:retries:" + task.request.id,
                   f"{task.name} {task.request.retries} {record}")


@shared_task(bind=True, name="test.retry_then_replace", service="echo", max_retries=5)
def retry_then_replace(self):
    note_retries(self)
    if self.request.retries < 2:
        raise self.retry(countdown=0)
    raise self.replace(retry_once.s())


@shared_task(bind=True, name="test.retry_once", service="echo", max_retries=1)
def retry_once(self):
    note_retries(self)
    if self.request.retries < 1:
        raise self.retry(countdown=0)
    return self.request.retries
'''


@pytest.fixture
def replace_env(jobs_env) -> dict[str, str]:  # noqa: ANN001
    return jobs_env("replace_jobs", REPLACE_JOBS)


def producer_task(app, name: str, service: str = "echo", **options):  # noqa: ANN001, ANN201
    """The producer's side of a job type of ``REPLACE_JOBS``: its name and service."""
    def body(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Runs on the workers only."""
    return app.task(name=name, service=service, shared=False, **options)(body)


def events_of(client: redis.Redis, job_id: str) -> list[tuple[str, dict]]:
    """The job's events, oldest first: (event name, data)."""
    entries = client.xrange(Keys("default").job_events(job_id))
    return [(fields["event"], json.loads(fields["data"])) for _, fields in entries]


@pytest.mark.timeout(180)
def test_a_replaced_job_returns_the_replacements_result_under_its_one_id(
        app, client, start_worker, replace_env) -> None:
    """Tried: a job of ``test.replace_with`` (service echo) that runs ``raise
    self.replace(test.tagged.s(20, 22))`` (service simulation, its own priority 10 and
    max_retries 7), submitted with customer acme and priority 80. Before: the run failed
    with ReplaceUnsupported and ``get()`` raised it. Now ``get()`` on the job's id returns
    the replacement's result, and the one record ends completed: service simulation,
    the job's customer and priority kept, the replacement's max_retries, a ``replaced``
    history entry and a ``job_replaced`` event between the two runs; no other job was
    filed."""
    start_worker("w1", **replace_env)
    replacing = producer_task(app, "test.replace_with")
    result = replacing.apply_async(kwargs={"target": "test.tagged", "args": [20, 22]},
                                   customer_id="acme", priority=80)
    assert result.get(timeout=60) == {"sum": 42}  # before: ReplaceUnsupported raised
    assert app.AsyncResult(result.id).get(timeout=10) == {"sum": 42}
    record = get_job(result.id, app=app)
    assert record["status"] == "completed", record
    assert record["service_required"] == "simulation"
    assert record["customer_id"] == "acme" and record["priority"] == 80
    assert record["max_retries"] == 7 and record["attempts"] == 2
    assert [(step["from_task"], step["to_task"], step["from_service"], step["to_service"],
             step["attempt"]) for step in record["replaced"]] == [
        ("test.replace_with", "test.tagged", "echo", "simulation", 1)]
    assert client.zrange(Keys("default").jobs, 0, -1) == [result.id]  # one job
    names = [name for name, _ in events_of(client, result.id)]
    assert names[names.index("job_replaced") - 1] == "job_started"
    assert names[names.index("job_replaced"):] == [
        "job_replaced", "job_assigned", "job_started", "complete_job"], names
    replaced = dict(events_of(client, result.id))["job_replaced"]
    assert replaced["job_type"] == "simulation" and replaced["to_task"] == "test.tagged"


@pytest.mark.timeout(180)
def test_a_replacements_retries_count_from_zero_in_the_run_and_the_record(
        app, client, start_worker, replace_env) -> None:
    """Tried: a job of ``test.retry_then_replace`` (max_retries 5) that retries twice,
    then replaces itself with ``test.retry_once`` (max_retries 1), which retries once and
    returns its ``self.request.retries``; each run notes its ``request.retries`` and the
    record's ``retries``. As in Celery (the replacement is a new message), the
    replacement's runs see 0, then 1. Before: the record kept counting across the
    replace, saying 2 and 3 (and ``job_retrying`` said retries 3) while the run said 0
    and 1. Now the record agrees with the run, the replace step keeps the replaced task's
    2 retries, and the job's allowance of crashed attempts still leaves retries out."""
    start_worker("w1", **replace_env)
    result = producer_task(app, "test.retry_then_replace").apply_async()
    assert result.get(timeout=60) == 1
    assert client.lrange("test:retries:" + result.id, 0, -1) == [
        "test.retry_then_replace 0 0", "test.retry_then_replace 1 1",
        "test.retry_then_replace 2 2", "test.retry_once 0 0", "test.retry_once 1 1"]
    record = get_job(result.id, app=app)
    assert record["status"] == "completed" and record["retries"] == 1, record
    assert record["max_retries"] == 1 and record["attempts"] == 5
    assert [step["retries"] for step in record["replaced"]] == [2]
    retrying = [data["retries"] for name, data in events_of(client, result.id)
                if name == "job_retrying"]
    assert retrying == [1, 2, 1]


@pytest.mark.timeout(180)
def test_a_socket_follower_sees_the_job_complete_with_the_replacements_result(
        app, client, start_worker, start_server, replace_env) -> None:
    """Tried: a client WebSocket (``/ws/client/<id>``) subscribes to a running job of
    ``test.replace_after_go`` while its first run waits; the run then replaces itself
    with ``double.s(21)``. The follower gets, under the one job id, ``job_replaced``
    (to_task test.double), the replacement's ``job_assigned`` and ``job_started``, then
    ``complete_job`` carrying the replacement's result (42), and nothing after it. (No
    socket-level test said so before; it passed the first time it ran.)"""
    start_worker("w1", **replace_env)
    api = start_server("api")
    job = producer_task(app, "test.replace_after_go").apply_async()
    wait_for(lambda: client.lrange("test:waiting", 0, -1) == [job.id], timeout=60,
             message="the first run to wait")
    ws = WebSocketClient.connect(f"{api.ws_base}/ws/client/follower-1")
    messages: list[dict] = []
    try:
        assert json.loads(ws.receive(timeout=20))["type"] == "connection_established"
        ws.send(json.dumps({"type": "subscribe_progress", "job_id": job.id}))
        client.set("test:go", "1")
        while not messages or messages[-1].get("type") != "complete_job":
            text = ws.receive(timeout=30)
            assert text is not None, f"no completion; got {[m['type'] for m in messages]}"
            messages.append(json.loads(text))
        assert ws.receive(timeout=1) is None  # nothing after the completion
    finally:
        ws.close()
    events = [m for m in messages if "event_id" in m]
    assert {m["job_id"] for m in events} == {job.id}
    types = [m["type"] for m in events]
    assert types[types.index("job_replaced"):] == [
        "job_replaced", "job_assigned", "job_started", "complete_job"], types
    assert types.count("complete_job") == 1 and "job_failed" not in types
    replaced = events[types.index("job_replaced")]
    assert replaced["to_task"] == "test.double" and replaced["attempt"] == 1
    done = events[-1]
    assert done["result"] == {"status": "success", "data": 42}, done
    assert done["attempt"] == 2 and done["worker_id"] == "w1"
    assert job.get(timeout=10) == 42


@pytest.mark.timeout(180)
def test_replace_inside_a_chain_or_chord_hands_on_the_replacements_result(
        app, client, start_worker, replace_env) -> None:
    """Tried: ``chain(test.replace_with(target=test.double, args=[5]), test.add.s(100))``.
    Before: the first link failed with ReplaceUnsupported and the chain stopped. Now the
    first link's job runs ``double(5)`` under its id and the next link gets its result
    (Celery moves the rest of the chain onto the replacement): 110. And in a chord's
    header, the body gets the replacement's result among the others'."""
    start_worker("w1", **replace_env)
    replacing, add = producer_task(app, "test.replace_with"), producer_task(app, "test.add")
    result = chain(replacing.si(target="test.double", args=[5]), add.s(100)).apply_async()
    assert result.get(timeout=60) == 110  # before: ReplaceUnsupported raised
    first = result.parent
    assert first.get(timeout=10) == 10
    record = get_job(first.id, app=app)
    assert record["status"] == "completed" and len(record["replaced"]) == 1, record
    assert get_job(result.id, app=app)["status"] == "completed"
    double, total = producer_task(app, "test.double"), producer_task(app, "test.total")
    header = [replacing.si(target="test.double", args=[5]), double.si(3)]
    assert chord(header)(total.s()).get(timeout=60) == 16  # the body got the replacement's 10


@pytest.mark.timeout(180)
def test_a_replace_by_an_attempt_taken_away_is_refused_and_changes_nothing(
        app, client, start_worker, replace_env) -> None:
    """Tried: a job whose attempt 1 waits, is requeued meanwhile (its attempt taken away,
    as an expired lease does), and then runs ``raise self.replace(double.s(21))``. The
    refused replace changes nothing: the record keeps its service, message and class,
    no ``replaced`` history, no ``job_replaced`` event, and attempt 2 runs the job's own
    task to the end. A job of the same type left alone is replaced (before: every
    replace failed with ReplaceUnsupported, so that second job failed)."""
    start_worker("w1", **replace_env)
    late = producer_task(app, "test.replace_after_go")
    taken = late.apply_async()
    wait_for(lambda: client.lrange("test:waiting", 0, -1) == [taken.id], timeout=60,
             message="attempt 1 to wait")
    functions = QueueFunctions(client, "default")
    assert functions.requeue(taken.id, 1, "taken away by the test") == "pending"
    key = Keys("default").job(taken.id)
    before = {name: client.hget(key, name) for name in ("service_required", "class",
                                                        "message", "status")}
    client.set("test:go", "1")
    assert taken.get(timeout=60) == "ran again"
    record = get_job(taken.id, app=app)
    assert record["status"] == "completed" and "replaced" not in record, record
    assert record["service_required"] == "echo"
    assert before["status"] == "pending" and client.hget(key, "class") == before["class"]
    assert "job_replaced" not in [name for name, _ in events_of(client, taken.id)]
    client.delete("test:go", "test:waiting")
    client.set("test:go", "1")
    kept = late.apply_async()
    assert kept.get(timeout=60) == 42  # before: ReplaceUnsupported raised
    assert get_job(kept.id, app=app)["replaced"][0]["to_task"] == "test.double"


@pytest.mark.timeout(180)
def test_replacements_it_cannot_refile_are_refused_before_anything_is_written(
        app, client, start_worker, replace_env) -> None:
    """Tried: ``raise self.replace(group(double.s(1), double.s(2)))``, a replace with a
    task no job type has, and replacements naming another customer, a workflow the job
    has none of, or another pool. For a group Celery would give the job's id to a chord
    body filed later by another job's run, which EMP cannot refile: the job fails with
    ReplaceUnsupported naming the group (InvalidJob naming the task, the customer, the
    workflow, the pool), and no other job was filed (before: every replace failed with
    ReplaceUnsupported, whatever it named)."""
    start_worker("w1", **replace_env)
    grouped = producer_task(app, "test.replace_with_group").apply_async()
    with pytest.raises(Exception, match=r"Task.replace\(\) with a group is not supported"):
        grouped.get(timeout=60)
    record = get_job(grouped.id, app=app)
    assert record["status"] == "failed" and "ReplaceUnsupported" in record["last_error"]
    assert "replaced" not in record and record["service_required"] == "echo"
    unknown = producer_task(app, "test.replace_with").apply_async(
        kwargs={"target": "test.nowhere", "args": []})
    with pytest.raises(Exception, match="unknown task 'test.nowhere'"):
        unknown.get(timeout=60)
    assert get_job(unknown.id, app=app)["status"] == "failed"
    naming = producer_task(app, "test.replace_naming")
    other_customer = naming.apply_async(kwargs={"customer_id": "other"}, customer_id="acme")
    with pytest.raises(Exception, match=r"keeps the job's customer_id \('acme'\)"):
        other_customer.get(timeout=60)
    no_workflow = naming.apply_async(kwargs={"workflow_id": "wf-1"})
    with pytest.raises(Exception, match=r"keeps the job's workflow_id \(None\)"):
        no_workflow.get(timeout=60)
    other_pool = naming.apply_async(kwargs={"queue": "gpu"})
    with pytest.raises(Exception, match=r"stays in the job's pool 'default'; queue= names "
                                        r"pool 'gpu'"):
        other_pool.get(timeout=60)
    for job in (unknown, other_customer, no_workflow, other_pool):
        record = get_job(job.id, app=app)
        assert record["status"] == "failed" and "replaced" not in record, record
    assert sorted(client.zrange(Keys("default").jobs, 0, -1)) == sorted(
        [grouped.id, unknown.id, other_customer.id, no_workflow.id, other_pool.id])


@pytest.mark.timeout(180)
def test_a_replacement_that_names_another_pool_is_refused_naming_both(
        app, client, start_worker, replace_env, tmp_path) -> None:
    """Tried: jobs of pool default replacing themselves with ``double.s(1)`` whose
    ``requirements`` say ``{"pool": "gpu"}``, with ``pool="gpu"``, with a task whose
    own ``queue`` option is gpu and with one the worker's ``task_routes`` route to gpu
    (where Celery would send their messages). Before: the task's queue (and route) was
    passed over (the replacement ran in default and returned 1, though a submit of it
    files it in gpu); ``requirements.pool`` was refiled in default with a message
    saying gpu, whose run then failed "task ended without recording an outcome" and
    ``get()`` timed out; pool= was refused as "the job's queue". Now each fails with
    InvalidJob naming the job's pool and the one the replacement names, before anything
    is written: no ``replaced`` history, no ``job_replaced`` event, no job in gpu."""
    with open(tmp_path / "replace_jobs_config.py", "a") as config:
        config.write("task_routes = {'test.gpu_routed': {'queue': 'gpu'}}\n")
    start_worker("w1", **replace_env)
    naming = producer_task(app, "test.replace_naming")
    replacing = producer_task(app, "test.replace_with")
    jobs = {
        "requirements.pool": naming.apply_async(kwargs={"requirements": {"pool": "gpu"}}),
        "pool=": naming.apply_async(kwargs={"pool": "gpu"}),
        "queue option": replacing.apply_async(kwargs={"target": "test.gpu_queued",
                                                      "args": [1]}),
        "task_routes": replacing.apply_async(kwargs={"target": "test.gpu_routed",
                                                     "args": [1]}),
    }
    for named, job in jobs.items():
        with pytest.raises(Exception, match=r"stays in the job's pool 'default'; .* names "
                                            r"pool 'gpu'") as raised:
            job.get(timeout=60)
        assert named in str(raised.value), raised.value
        record = get_job(job.id, app=app)
        assert record["status"] == "failed" and "replaced" not in record, record
        assert record["last_error"].startswith("InvalidJob: "), record
        assert record["service_required"] == "echo" and record["pool"] == "default"
        assert "job_replaced" not in [name for name, _ in events_of(client, job.id)]
    assert client.zrange(Keys("gpu").jobs, 0, -1) == []


@pytest.mark.timeout(180)
def test_a_replacement_waits_for_a_worker_of_its_service_and_may_replace_again(
        app, start_worker, replace_env) -> None:
    """Tried: a job that replaces itself with ``test.replace_with`` again, which replaces
    itself with ``test.on_gpu`` (service gpu-only), while the pool's only worker serves
    echo and simulation. Before: the first replace failed the job (ReplaceUnsupported).
    Now the job waits pending under gpu-only, as a submit of that task would, with both
    steps in its history, and completes once a gpu-only worker comes."""
    start_worker("w1", **replace_env)
    replacing = producer_task(app, "test.replace_with")
    result = replacing.apply_async(kwargs={"target": "test.replace_with",
                                           "args": ["test.on_gpu", [7]]})

    def waiting() -> bool:
        record = get_job(result.id, app=app)
        assert record["status"] not in ("failed", "completed"), record
        return record["status"] == "pending" and len(record.get("replaced") or []) == 2

    wait_for(waiting, timeout=60, message="the job to wait under gpu-only")
    record = get_job(result.id, app=app)
    assert record["service_required"] == "gpu-only", record
    assert [step["to_task"] for step in record["replaced"]] == ["test.replace_with",
                                                                  "test.on_gpu"]
    start_worker("w2", WORKER_SERVICES="gpu-only", **replace_env)
    assert result.get(timeout=60) == 7
    record = get_job(result.id, app=app)
    assert record["status"] == "completed" and record["worker_id"] == "w2", record


@pytest.mark.fast
def test_run_eagerly_a_replace_is_celerys_own(app, client) -> None:  # noqa: ANN001
    """Tried: ``apply()`` of a task that replaces itself (no job: run in the caller's
    process). Celery's own replace runs the replacement eagerly and returns its value;
    nothing is filed in Redis."""
    @app.task(bind=True, name="test.eager_replacing", service="echo", shared=False)
    def eager_replacing(self, x: int) -> int:
        return self.replace(eager_double.s(x))

    @app.task(name="test.eager_double", service="echo", shared=False)
    def eager_double(x: int) -> int:
        return 2 * x

    assert eager_replacing.apply(args=[4]).get() == 8
    assert client.keys("emp:*") == []
