"""Redis at ``maxmemory`` (policy ``noeviction``): it refuses every write, and workers and
the API must say so once and wait, never spin, answer 500 or write half a job."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from capability_router.keys import Keys
from conftest import ROOT, wait_for
from emp_tasks.app import create_app
from emp_tasks.local_redis import LocalRedis
from emp_tasks.producer import get_job, submit
from emp_tasks.websocket_client import WebSocketClient as Client


@pytest.fixture
def redis_full(client: redis.Redis) -> Iterator[Callable[[], None]]:
    """Yields a function that fills Redis: ``maxmemory 1`` byte, so every write that may
    grow memory is refused (OOM) at once. Restored to no limit afterwards."""
    def fill() -> None:
        client.config_set("maxmemory", "1")

    try:
        yield fill
    finally:
        client.config_set("maxmemory", "0")


@pytest.mark.timeout(90)
def test_a_worker_waits_while_redis_refuses_its_claims(app, client, start_worker,
                                                        redis_full) -> None:
    """Tried: an idle worker, then Redis at maxmemory for 3 s (noeviction: each claim is
    refused with OOM), then memory freed and a job submitted. Before the fix the worker
    claimed again at once after every refusal: ~3,000 claims and as many "claim failed"
    ERROR lines a second (51,000 lines in 8 s by hand), Redis and a core kept busy."""
    worker = start_worker("full-w1")
    redis_full()
    time.sleep(3.0)  # a window to count refusals in, not a wait for an event
    client.config_set("maxmemory", "0")
    log = worker.log_path.read_text(errors="replace")
    refusals = log.count("claim failed")
    assert 1 <= refusals <= 2, f"{refusals} 'claim failed' lines in 3 s"
    assert "OOM" in log or "maxmemory" in log
    job = submit("echo", {"n": 1}, app=app)
    assert job.get(timeout=30)["echo"] == {"n": 1}
    wait_for(lambda: "claims accepted again" in worker.log_path.read_text(), timeout=10,
             message="the worker to say claims are accepted again")
    assert get_job(job.id, app=app)["attempts"] == 1


@pytest.mark.timeout(90)
def test_a_worker_holding_a_job_says_once_that_its_lease_renewals_are_refused(
        app, client, start_worker, redis_full) -> None:
    """Tried: a worker running a job (echo, 4 s; leases renewed every ~0.7 s in tests)
    when Redis reaches maxmemory for 3 s. Before the fix every renewal's OutOfMemoryError
    escaped into kombu's timer: an "Error in timer" ERROR with a 20-line traceback per
    period. Now the refusal is one line, and one more when renewals are accepted again;
    the job still completes once Redis has room."""
    worker = start_worker("full-lease")
    job = submit("echo", {"n": 1, "sleep": 4}, app=app)
    wait_for(lambda: get_job(job.id, app=app)["status"] == "in_progress", timeout=20,
             message="the job to start")
    redis_full()
    time.sleep(3.0)  # a window of several renewal periods, not a wait for an event
    client.config_set("maxmemory", "0")
    assert job.get(timeout=40)["echo"] == {"n": 1}
    wait_for(lambda: "lease renewals accepted again" in worker.log_path.read_text(),
             timeout=10, message="the worker to say renewals are accepted again")
    log = worker.log_path.read_text(errors="replace")
    assert "Error in timer" not in log, log[-3000:]
    assert log.count("lease renewal refused") == 1, log[-3000:]


@pytest.mark.timeout(90)
def test_the_api_answers_503_while_redis_is_full_and_writes_nothing(
        client, start_server, redis_full) -> None:
    """Tried: the API, a job submitted, then Redis at maxmemory and the same kind of
    submit sent twice with an Idempotency-Key and once without (and once to an API without
    customer tokens), then memory freed and the submit retried.
    Before the fix each refused submit was a 500 "internal error" with a traceback in the
    log per request, though nothing was wrong with the request and a retry later works;
    a client reads a 500 as "do not retry". It should be a 503 with Retry-After that
    says Redis is full, with nothing written, and reads should keep working."""
    api = start_server("api", EMP_API_TOKENS="tok-acme=acme", EMP_API_PROCESSES="1")
    # An API without customer tokens has no customer limits to write first: the refused
    # write is the job's publish, which kombu wraps in its OperationalError.
    open_api = start_server("api", EMP_API_PROCESSES="1")
    acme = {"Authorization": "Bearer tok-acme"}
    body = {"service_required": "simulation", "payload": {"steps": 1}}
    first = requests.post(f"{api.base}/api/jobs", json=body, headers=acme, timeout=10)
    assert first.status_code == 201, first.text
    before = sorted(client.scan_iter("*"))
    redis_full()
    keyed = {**acme, "Idempotency-Key": "full-1"}
    for base, headers in ((api.base, keyed), (api.base, keyed), (api.base, acme),
                          (open_api.base, {})):
        refused = requests.post(f"{base}/api/jobs", json=body, headers=headers, timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        assert "out of memory" in refused.json()["error"]
    read = requests.get(f"{api.base}/api/jobs/{first.json()['job_id']}", headers=acme,
                        timeout=10)
    assert read.status_code == 200, read.text
    # no half-written job, no key claimed (the first submit's 3 s rate bucket may expire)
    assert set(client.scan_iter("*")) <= set(before)
    client.config_set("maxmemory", "0")
    accepted = requests.post(f"{api.base}/api/jobs", json=body, headers=keyed, timeout=10)
    assert accepted.status_code == 201, accepted.text
    assert client.zcard(Keys("default").status_index("pending")) == 2
    assert "Traceback" not in api.log()
    # Redis was up, refusing writes: logged as such, not as an outage ("Redis
    # unreachable", then "reachable again" at the next write, as it was)
    for server in (api, open_api):
        assert "Redis refuses writes (OutOfMemoryError" in server.log(), server.log()[-3000:]
        assert "unreachable" not in server.log(), server.log()[-3000:]


@pytest.fixture
def evicting(client: redis.Redis) -> Iterator[None]:
    """Redis with maxmemory-policy allkeys-lru for the test; noeviction again after."""
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield
    finally:
        client.config_set("maxmemory-policy", "noeviction")


@pytest.mark.timeout(90)
def test_services_warn_at_start_when_redis_may_evict_jobs(
        app, client, start_worker, start_server, evicting) -> None:
    """Tried: a worker, the API and the webhook service started on a Redis whose
    maxmemory-policy is allkeys-lru (a common cache setting), with maxmemory set. Before
    the fix none said
    anything: at maxmemory Redis deletes least recently used keys, pending jobs among
    them, and an accepted job vanished with no error anywhere. Each now warns at start,
    naming the policy and the fix; with noeviction none warns."""
    client.config_set("maxmemory", "512mb")
    try:
        worker = start_worker("evict-w1")
        api = start_server("api", EMP_API_PROCESSES="1")
        hooks = start_server("webhooks")
        wait_for(lambda: "maxmemory-policy" in hooks.log(), timeout=20,
                 message="the webhook service's warning")
    finally:
        client.config_set("maxmemory", "0")
    for log in (worker.log_path.read_text(errors="replace"), api.log(), hooks.log()):
        assert "maxmemory-policy is 'allkeys-lru'" in log, log[-2000:]
        assert "set maxmemory-policy noeviction" in log
    client.config_set("maxmemory-policy", "noeviction")
    quiet = start_worker("evict-w2")
    assert "maxmemory-policy" not in quiet.log_path.read_text(errors="replace")


@pytest.mark.timeout(90)
def test_the_webhook_service_answers_503_and_logs_no_traceback_while_redis_is_full(
        client, start_server, receiver, redis_full) -> None:
    """Tried: the webhook service running, Redis at maxmemory for 3 s, a hook registered
    meanwhile, then memory freed and the registration sent again. Before the fix the
    registration was a 500 "internal error", and each of the 8 dispatchers and the
    consumer logged a traceback every second (2,100 log lines in 6 s by hand), burying
    what was wrong. Now the registration is a 503 saying Redis is full, each delivery
    thread logs one line, and the registration works once memory is free."""
    hooks = start_server("webhooks", EMP_WEBHOOK_ALLOW_PRIVATE="1")
    wait_for(lambda: "consuming as" in hooks.log(), timeout=20, message="delivery threads")
    sink = receiver()
    hook = {"url": sink.url + "/full", "events": ["complete_job"]}
    redis_full()
    time.sleep(3.0)  # the delivery threads meet the refusals meanwhile
    refused = requests.post(f"{hooks.base}/webhooks", json=hook, timeout=10)
    assert refused.status_code == 503, refused.text
    assert "out of memory" in refused.json()["error"]
    assert refused.headers["Retry-After"]
    client.config_set("maxmemory", "0")
    log = hooks.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "out of memory" in log or "maxmemory" in log
    made = requests.post(f"{hooks.base}/webhooks", json=hook, timeout=10)
    assert made.status_code == 201, made.text


def next_of(ws: Client, kinds: set[str]) -> dict:
    """The next message of one of ``kinds`` on ``ws`` (others skipped)."""
    while True:
        message = json.loads(ws.receive(timeout=10))
        if message["type"] in kinds:
            return message


@pytest.mark.timeout(90)
def test_a_socket_submit_while_redis_is_full_is_answered_503_and_the_socket_stays(
        client, start_server, redis_full) -> None:
    """Tried: a client socket open, Redis at maxmemory, a ``submit_job`` sent on it;
    then memory freed and the submit sent again on the same socket. Before the fix the
    server closed the socket with a protocol error (1002 "Invalid attempt to fragment
    control frame") and no message: the client could not tell why (Redis down did the
    same). Now it gets ``error {status: 503, retry_after}`` saying why, the socket stays
    open and the submit works once memory is free."""
    api = start_server("api", EMP_API_TOKENS="tok-acme=acme", EMP_API_PROCESSES="1")
    ws = Client.connect(f"{api.ws_base}/ws/client/full-app?token=tok-acme")
    try:
        assert next_of(ws, {"connection_established"})
        redis_full()
        submit_job = {"type": "submit_job", "service_required": "echo", "payload": {"n": 1},
                      "message_id": "full-socket-1"}
        ws.send(json.dumps(submit_job))
        refused = next_of(ws, {"error", "job_submitted"})
        assert refused["type"] == "error" and refused["status"] == 503, refused
        assert "out of memory" in refused["error"] and refused["retry_after"]
        assert refused["message_id"] == "full-socket-1"
        client.config_set("maxmemory", "0")
        ws.send(json.dumps(submit_job))
        accepted = next_of(ws, {"error", "job_submitted"})
        assert accepted["type"] == "job_submitted", accepted
        assert accepted["job_id"] == "full-socket-1"
    finally:
        ws.close()
    assert "Redis refuses writes (OutOfMemoryError" in api.log(), api.log()[-3000:]
    assert "unreachable" not in api.log(), api.log()[-3000:]


@pytest.fixture
def results_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A second Redis, as Celery's result backend (a common production split)."""
    server = LocalRedis(tmp_path / "results", appendonly=False)
    server.start()
    yield server
    server.stop(kill=True)


@pytest.mark.timeout(120)
def test_a_run_that_meets_a_full_redis_is_run_again_not_failed(
        client, redis_server, start_worker, redis_full, results_redis, tmp_path) -> None:
    """Tried: a simulation job reporting progress every 0.2 s, Celery's results in a
    second Redis; the queue's Redis at maxmemory until the run's next progress report is
    refused, then memory freed. Before the fix the refused progress write failed the run:
    its FAILURE (OutOfMemoryError) reached the result backend and ``get()`` raised it,
    while the job itself ran again once the lease lapsed and its record ended
    ``completed``. Now the run ends as when Redis is unreachable (requeued, nothing
    stored) and ``get()`` returns the second attempt's result."""
    (tmp_path / "results_config.py").write_text(f"result_backend = {results_redis.url!r}\n")
    worker = start_worker("full-run", PYTHONPATH=f"{ROOT}:{tmp_path}",
                          EMP_CELERY_CONFIG="results_config")
    producer = create_app(redis_server.url, result_backend=results_redis.url)
    try:
        result = submit("simulation", {"steps": 20, "duration": 4}, app=producer)
        key = Keys("default").job(result.id)
        wait_for(lambda: float(client.hget(key, "progress") or 0) > 0, timeout=30,
                 message="the run's first progress report")
        redis_full()
        refused = f"job_failed job={result.id}: OutOfMemoryError"  # the connector's line
        wait_for(lambda: refused in worker.log_path.read_text(errors="replace"),
                 timeout=20, message="the run's progress report refused")
        client.config_set("maxmemory", "0")
        assert result.get(timeout=60)["success"] is True
        record = get_job(result.id, app=producer)
        assert (record["status"], record["attempts"]) == ("completed", 2)
        # Celery logs a rejection with its traceback; this one says all in its line.
        log = worker.log_path.read_text(errors="replace")
        assert f"job {result.id}: the queue's Redis was unreachable" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        producer.close()


@pytest.mark.timeout(90)
def test_the_monitor_answers_503_while_redis_is_full(client, start_server, redis_full) -> None:
    """Tried: the monitor's Submit action (``POST /emp/api/submit``, as its own page
    sends it) while Redis is at maxmemory. Before the fix the 503 said "redis
    unavailable" (kombu wraps the refused publish as a connection error), sending the
    operator to look for a network fault. Now it says Redis is out of memory, with
    Retry-After, and nothing is written; reads keep answering. Its log says Redis
    refuses writes (it said "Redis unreachable", then "reachable again")."""
    monitor = start_server("monitor")
    own = {"Content-Type": "application/json", "Origin": monitor.base,
           "Sec-Fetch-Site": "same-origin"}
    body = json.dumps({"service_required": "echo", "payload": {}})
    redis_full()
    reply = requests.post(monitor.base + "/emp/api/submit", data=body, headers=own, timeout=10)
    assert reply.status_code == 503, (reply.status_code, reply.text[:300])
    assert "out of memory" in reply.text and reply.headers["Retry-After"]
    assert requests.get(monitor.base + "/emp/api/queue", timeout=10).status_code == 200
    client.config_set("maxmemory", "0")
    assert client.zcard(Keys("default").status_index("pending")) == 0
    log = monitor.log_path.read_text(errors="replace")
    assert "Uncaught exception" not in log
    assert "Redis refuses writes (OutOfMemoryError" in log, log[-3000:]
    assert "unreachable" not in log, log[-3000:]


@pytest.mark.timeout(90)
def test_a_worker_started_on_a_full_or_absent_redis_says_so_in_one_line(
        client, start_worker, redis_full) -> None:
    """Tried: ``emp worker`` started while Redis is at maxmemory, and one started on a
    port where no Redis listens. Before the fix each died with a 40-70 line traceback
    (redis-py, click, Celery frames) ending in OutOfMemoryError or ConnectionError. Now
    each exits 1 with one line naming the Redis and the reason."""
    redis_full()
    full = start_worker("start-full", wait=False)
    assert full.process.wait(timeout=60) == 1
    client.config_set("maxmemory", "0")
    absent = start_worker("start-absent", wait=False, EMP_REDIS_URL="redis://127.0.0.1:1/0")
    assert absent.process.wait(timeout=60) == 1
    for worker, reason in ((full, "out of memory"), (absent, "Connection refused")):
        log = worker.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-1500:]
        assert reason in log and "Error: " in log, log[-1500:]


@pytest.mark.timeout(120)
def test_emp_commands_that_write_say_in_one_line_that_redis_is_full(
        app, client, redis_server, redis_full) -> None:
    """Tried: ``emp submit``, ``emp cancel`` (of a pending job) and ``emp demo`` against a
    Redis at maxmemory (it answers the commands' start check, a PING, and refuses their
    writes). Before, each printed kombu's OperationalError with two tracebacks. Now each
    exits 1 with one line saying Redis is out of memory, and nothing is written."""
    import subprocess
    import sys

    pending = submit("echo", {}, requirements={"hardware": {"gpu_memory_gb": 99}}, app=app)
    before = sorted(client.scan_iter("*"))
    redis_full()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": redis_server.url}
    for args in (["submit", "echo", "--no-wait"], ["cancel", pending.id], ["demo"]):
        done = subprocess.run([sys.executable, "-m", "emp_tasks.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, (args, done.stdout, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (args, done.stderr[-2000:])
        assert done.stderr.startswith("Error: Redis is out of memory (maxmemory reached"), (
            args, done.stderr[-2000:])
    client.config_set("maxmemory", "0")
    assert sorted(client.scan_iter("*")) == before
    assert get_job(pending.id, app=app)["status"] == "pending"
