"""A hung Redis: it stops answering but keeps its connections open (a hung host, a
partition without RST), simulated with SIGSTOP for several socket timeouts, then SIGCONT.

The outage tests before this one killed Redis or paused its clients: a refused or
reset connection fails at once. A stopped server fails nothing: each call waits
for the socket timeout, or for ever where there is none.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests

from capability_router.cluster import make_client
from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import JOB_EVENTS_SUFFIX, Keys
from capability_router.profile import WorkerProfile
from conftest import wait_for
from emp_tasks.producer import get_job, job_events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: The Redis socket timeout every service and worker here runs with
#: (``EMP_REDIS_SOCKET_TIMEOUT``; 5 s by default). What these tests check is counted in
#: timeouts (a 503 within one, one log line over an outage of several), not in seconds:
#: with the default each outage only lasted longer.
HANG_TIMEOUT = 2.0
#: The environment that sets it.
HANG_ENV = {"EMP_REDIS_SOCKET_TIMEOUT": str(HANG_TIMEOUT)}
#: Seconds Redis stays stopped in the first test: five timeouts, and five of its 2 s leases
#: (it was 20 s with the 5 s default: room for two rounds of a timeout each).
STOP_SECONDS = 5 * HANG_TIMEOUT
#: Seconds an HTTP client waits for an answer while Redis is stopped.
CLIENT_TIMEOUT = 15.0
#: Longest wait for a 503: one socket timeout (the route's own call, or, once the outage
#: is known, the one probe at a time of ``webapp.outage``), plus slack for a loaded machine.
BOUND_SECONDS = HANG_TIMEOUT + 2.0
#: Most a request that is not the probe waits for its 503 during a known outage.
AT_ONCE_SECONDS = 1.0


def timed(method: str, url: str, **kwargs: Any) -> tuple[float, Any]:
    """(seconds, the response or the client's exception) of one request."""
    started = time.monotonic()
    try:
        reply: Any = requests.request(method, url, timeout=CLIENT_TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        reply = exc
    return time.monotonic() - started, reply


def at_once(calls: dict[str, Callable[[], tuple[float, Any]]]) -> dict[str, tuple[float, Any]]:
    """Run the calls in parallel; their results by name."""
    results: dict[str, tuple[float, Any]] = {}
    threads = [threading.Thread(target=lambda n=name, c=call: results.__setitem__(n, c()))
               for name, call in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def assert_bounded_503s(rounds: list[dict[str, tuple[float, Any]]],
                        what: str) -> list[dict[str, float]]:
    """Every answer of every round a 503 with ``Retry-After`` within ``BOUND_SECONDS``;
    returns (and prints) the seconds each took, by round."""
    timings = [{name: round(seconds, 1) for name, (seconds, _) in answers.items()}
               for answers in rounds]
    print(f"\nseconds to {what} while Redis was stopped, by round: {timings}")
    wrong = [(name, round(seconds, 1), getattr(reply, "status_code", reply))
             for answers in rounds for name, (seconds, reply) in answers.items()
             if not (isinstance(reply, requests.Response) and reply.status_code == 503
                     and reply.headers.get("Retry-After", "").isdigit()
                     and seconds < BOUND_SECONDS)]
    assert not wrong, f"not a 503 with Retry-After within {BOUND_SECONDS} s: {wrong}"
    return timings


def all_job_ids(client: redis.Redis) -> set[str]:
    """Every job record of the default pool (also those filed after a 503)."""
    prefix = Keys("default").job("")
    return {key[len(prefix):] for key in client.scan_iter(match=prefix + "*", count=1000)
            if not key.endswith(JOB_EVENTS_SUFFIX)}


def test_a_hung_redis_gets_bounded_503s_and_loses_no_job(
        app, client, start_worker, start_server, freeze) -> None:
    """Tried: two workers (leases of 2 s), the API and the webhook service (all with a 2 s
    socket timeout); a 4 s job running and three queued, then Redis stopped (SIGSTOP) for
    10 s (20 s with the 5 s default) while two rounds of
    POST /api/jobs, GET /api/jobs/<id>, the API's and the webhook service's /health
    are sent (clients wait 15 s), then Redis continued.

    Before the fix kombu's connections had no socket timeout (kombu passes None to
    redis-py): POST /api/jobs hung past the client's 15 s (the publish waited for
    Redis), and after SIGCONT the unanswered request was filed anyway. With a 5 s
    timeout alone, Celery's three publish retries still made that 503 take 25 s. The
    workers' lease renewals hung their event loops for the whole stop instead of
    failing, and said nothing. Until the outage gate, a request during a known outage
    pinged Redis and then made its own call: two socket timeouts (10 s) in the second
    round. Now every call is a 503 with Retry-After within one socket timeout,
    one log line per outage in each service, no traceback;
    a worker whose renewals failed says so once, and once that they work again;
    every job accepted before or during the stop completes once after it, on the
    attempt the lease rules give.
    """
    workers = [start_worker("hang-w1", **HANG_ENV), start_worker("hang-w2", **HANG_ENV)]
    api = start_server("api", EMP_API_PROCESSES="1", **HANG_ENV)
    hooks = start_server("webhooks", **HANG_ENV)
    jobs_url = api.base + "/api/jobs"

    def accepted(body: dict[str, Any]) -> str:
        reply = requests.post(jobs_url, json=body, timeout=10)
        assert reply.status_code == 201, reply.text
        return reply.json()["job_id"]

    running = accepted({"service_required": "echo", "payload": {"n": 0, "sleep": 4}})
    wait_for(lambda: get_job(running, app=app)["status"] == "in_progress", timeout=20,
             message="the long job to start")
    before = [accepted({"service_required": "echo", "payload": {"n": n, "sleep": 0.5}})
              for n in range(1, 4)]
    calls = {
        "POST /api/jobs": lambda: timed("POST", jobs_url, json={
            "service_required": "echo", "payload": {"n": 10}}),
        "GET /api/jobs/<id>": lambda: timed("GET", f"{jobs_url}/{running}"),
        "GET /health": lambda: timed("GET", api.base + "/health"),
        "webhooks GET /health": lambda: timed("GET", hooks.base + "/health"),
    }
    freeze(True)
    stopped_at = time.monotonic()
    rounds = [at_once(calls), at_once(calls)]
    time.sleep(max(0.0, STOP_SECONDS - (time.monotonic() - stopped_at)))
    freeze(False)
    resumed_at = time.monotonic()

    timings = [{name: round(seconds, 1) for name, (seconds, _) in answers.items()}
               for answers in rounds]
    print(f"\nseconds to an answer while Redis was stopped, by round: {timings}")
    wrong = [(name, round(seconds, 1), getattr(reply, "status_code", reply),
              getattr(reply, "headers", {}).get("Retry-After"))
             for answers in rounds for name, (seconds, reply) in answers.items()
             if not (isinstance(reply, requests.Response) and reply.status_code == 503
                     and reply.headers.get("Retry-After", "").isdigit()
                     and seconds < BOUND_SECONDS)]
    assert not wrong, f"not a 503 with Retry-After within {BOUND_SECONDS} s: {wrong}"

    # (b) Workers alive and claiming; every job accepted completes, once.
    after = accepted({"service_required": "echo", "payload": {"n": 20}})
    accepted_ids = [running, *before, after]
    for worker in workers:
        assert worker.process.poll() is None, worker.log_path.read_text()[-3000:]
    wait_for(lambda: all(get_job(j, app=app)["status"] == "completed" for j in accepted_ids),
             timeout=40, every=0.2, message="every accepted job to complete")
    print(f"accepted jobs completed {time.monotonic() - resumed_at:.1f} s after SIGCONT")
    # A 503 says Redis did not answer in time, not that nothing was written: a hung
    # server runs the command it received once it goes on. Those jobs run too.
    filed = all_job_ids(client)
    assert set(accepted_ids) <= filed
    ghosts = filed - set(accepted_ids)
    print(f"filed though answered 503: {len(ghosts)} of 2")
    assert len(ghosts) <= 2
    wait_for(lambda: all(get_job(j, app=app)["status"] == "completed" for j in ghosts),
             timeout=30, every=0.2, message="the jobs filed after a 503 to complete")
    for job_id in filed:
        events = [e["event"] for e in job_events(job_id, app=app)]
        assert events.count("complete_job") == 1, (job_id, events)
        assigned = [i for i, event in enumerate(events) if event == "job_assigned"]
        # (c) A second run only after the first attempt's lease ran out (job_requeued):
        # never two attempts at once that the fence would refuse quietly.
        for earlier, later in zip(assigned, assigned[1:], strict=False):
            assert "job_requeued" in events[earlier:later], (job_id, events)
        assert get_job(job_id, app=app)["attempts"] == len(assigned), (job_id, events)
    print("the running job's events:", [e["event"] for e in job_events(running, app=app)])

    # One line per outage in each service, no traceback.
    wait_for(lambda: requests.get(api.base + "/health", timeout=10).status_code == 200,
             timeout=20, message="the API's /health to answer 200")
    wait_for(lambda: requests.get(hooks.base + "/health", timeout=10).status_code == 200,
             timeout=20, message="the webhook service's /health to answer 200")
    for server in (api, hooks):
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert log.count("Redis unreachable") == 1, log[-3000:]
        assert log.count("Redis reachable again") == 1, log[-3000:]
    # A worker learns that renewals work again at its next renewal, so only while it
    # holds a job: one that held none since the stop has nothing to say yet. Six 1.5 s
    # jobs give each worker some.
    failed_line, again_line = "lease renewal failed: Redis unreachable", \
        "lease renewals accepted again"
    for n in range(6):
        accepted({"service_required": "echo", "payload": {"n": 30 + n, "sleep": 1.5}})
    for worker in workers:
        if failed_line in worker.log_path.read_text(errors="replace"):
            wait_for(lambda w=worker: again_line in w.log_path.read_text(errors="replace"),
                     timeout=20, message=f"{worker.worker_id} to say renewals work again")
    logs = [worker.log_path.read_text(errors="replace") for worker in workers]
    for log in logs:
        assert log.count(failed_line) == log.count(again_line) <= 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    # Whether a worker renews during the stop at all depends on timing: its job's own
    # call may time out first and give the job back (then it holds nothing to renew),
    # or its event loop may be blocked for the stop (seen: Celery's event heartbeat).


#: Seconds Redis stays stopped in the shorter tests below: four timeouts, each background
#: thread's retries (a timeout, then 1 s) failing twice or more (it was 15 s, three 5 s
#: timeouts).
SHORT_STOP_SECONDS = 4 * HANG_TIMEOUT


def test_a_hung_redis_costs_a_request_one_timeout_and_each_service_one_line(
        start_server, freeze) -> None:
    """Tried: the API (its machine reaper every second) and the webhook service (eight
    dispatchers and a consumer), both with a 2 s socket timeout, Redis stopped (SIGSTOP)
    for four timeouts (8 s; 15 s with the 5 s default) while three rounds of
    four requests are sent to each at once, then continued.

    Before the fix the first round took one socket timeout (5 s), each later one two
    (10 s: the outage check's ping, then the route's own call), every request of a
    round waiting on Redis at once; the webhook service logged "webhook dispatcher:
    Redis unavailable" or "webhook consumer: ..." per thread per retry (36 lines here)
    and the API "machine reaper: Timeout reading from socket" per failed period (4).
    Now no request waits more than one timeout: once the outage is known, one request
    at a time probes and the others get their 503 at once; each service logs one line
    when the outage starts and one when it ends.
    """
    api = start_server("api", EMP_API_PROCESSES="1", EMP_MACHINE_REPORT_SECONDS="1",
                       **HANG_ENV)
    hooks = start_server("webhooks", **HANG_ENV)
    wait_for(lambda: requests.get(hooks.base + "/health", timeout=5).json()["delivery"]
             ["running"], timeout=20, message="the webhook service's delivery threads")
    api_calls = {
        "POST /api/jobs": lambda: timed("POST", api.base + "/api/jobs", json={
            "service_required": "echo", "payload": {"n": 1}}),
        "GET /api/jobs/<id>": lambda: timed("GET", api.base + "/api/jobs/nope"),
        "GET /api/jobs": lambda: timed("GET", api.base + "/api/jobs"),
        "GET /api/pools": lambda: timed("GET", api.base + "/api/pools"),
    }
    hook_calls = {
        "POST /webhooks/<id>/reconnect": lambda: timed(
            "POST", hooks.base + "/webhooks/nope/reconnect"),
        "GET /webhooks": lambda: timed("GET", hooks.base + "/webhooks"),
        "GET /webhooks/<id>": lambda: timed("GET", hooks.base + "/webhooks/nope"),
        "GET /deliveries/recent": lambda: timed("GET", hooks.base + "/deliveries/recent"),
    }
    freeze(True)
    stopped_at = time.monotonic()
    rounds = [at_once({**api_calls, **hook_calls}) for _ in range(3)]
    time.sleep(max(0.0, SHORT_STOP_SECONDS - (time.monotonic() - stopped_at)))
    freeze(False)

    timings = assert_bounded_503s(rounds, "an answer")
    # Rounds after the first meet a known outage: one probe per service, the rest at once.
    for answers in rounds[1:]:
        for calls in (api_calls, hook_calls):
            waited = [name for name in calls if answers[name][0] > AT_ONCE_SECONDS]
            assert len(waited) <= 1, (waited, timings)

    wait_for(lambda: requests.get(api.base + "/api/jobs", timeout=10).status_code == 200,
             timeout=20, message="the API to answer again")
    wait_for(lambda: requests.get(hooks.base + "/webhooks", timeout=10).status_code == 200,
             timeout=20, message="the webhook service to answer again")
    for server, chatter in ((api, "machine reaper"), (hooks, "Redis unavailable")):
        wait_for(lambda s=server: "Redis reachable again" in s.log_path.read_text(),
                 timeout=10, message=f"{server.command} to say Redis is back")
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert log.count("Redis unreachable") == 1, log[-3000:]
        assert log.count("Redis reachable again") == 1, log[-3000:]
        assert chatter not in log, log[-3000:]


#: A job type that touches no Redis while it runs: only the solo pool's lease keeper does.
QUIET_JOBS = '''
import time

from celery import shared_task


@shared_task(bind=True, name="test.quiet_sleep", service="echo")
def quiet_sleep(self, seconds):
    time.sleep(seconds)
    return "slept"
'''
#: Seconds Redis stays stopped under the solo worker: a renewal fails after a socket
#: timeout (``QueueFunctions._send`` does not retry it), and the ones after it fail too
#: until the end of the stop: four timeouts (it was 13 s with the 5 s default).
SOLO_STOP_SECONDS = 4 * HANG_TIMEOUT


def test_a_solo_worker_says_once_that_lease_renewals_fail_and_once_that_they_work(
        app, start_worker, jobs_env, freeze) -> None:
    """Tried: a ``-P solo`` worker (2 s leases, renewed by its lease keeper thread while
    the job runs on the event loop; 2 s socket timeout) running a 12 s job that touches
    no Redis, Redis stopped (SIGSTOP) for 8 s in the middle of it, then continued
    (before: 17 s and 13 s with the 5 s default).

    Before the fix the keeper logged its failed renewals at debug only: the worker's
    log (level warning) said nothing of the outage, where a prefork worker says "lease
    renewal failed: Redis unreachable (...)" once and "lease renewals accepted again"
    once. Now the solo worker says the same, once each (the keeper and the transport
    share that state).
    """
    worker = start_worker("hang-solo", args=["-P", "solo"],
                          **jobs_env("quiet_jobs", QUIET_JOBS), **HANG_ENV)

    def quiet_sleep(seconds: float) -> None:
        """Runs on the worker only."""

    task = app.task(name="test.quiet_sleep", service="echo", shared=False)(quiet_sleep)
    job = task.apply_async(kwargs={"seconds": SOLO_STOP_SECONDS + 4})
    wait_for(lambda: get_job(job.id, app=app)["status"] == "in_progress", timeout=20,
             message="the solo worker to start the job")
    time.sleep(1.0)
    freeze(True)
    time.sleep(SOLO_STOP_SECONDS)
    freeze(False)
    wait_for(lambda: "lease renewals accepted again" in worker.log_path.read_text(),
             timeout=10, message="the solo worker to say its renewals work again")
    log = worker.log_path.read_text(errors="replace")
    assert log.count("lease renewal failed: Redis unreachable") == 1, log[-3000:]
    assert log.count("lease renewals accepted again") == 1, log[-3000:]
    assert worker.process.poll() is None, log[-3000:]


#: The monitor's JSON reads (each one Redis call on its executor) and its health check.
MONITOR_READS = ("/emp/api/queue", "/emp/api/jobs", "/emp/api/machines", "/emp/api/pools",
                 "/emp/api/webhooks", "/emp/api/jobs/nope", "/health")
#: Reads sent at once once the outage is known: more than the monitor's 16 executor threads.
MONITOR_BURST = 20


def test_a_hung_redis_costs_the_monitor_one_waiting_request_at_a_time(
        start_server, freeze) -> None:
    """Tried: the monitor (2 s socket timeout), Redis stopped (SIGSTOP) for four timeouts
    (8 s; 15 s with the 5 s default) while its seven JSON reads
    (and /health) are sent at once, then 20 of them at once, then Redis continued.

    Before the fix the monitor had no outage gate: every request, the outage known or
    not, held one of its 16 executor threads for the socket timeout (5 s); the 20 at
    once filled the executor and the last four waited behind them (10 s), as did
    everything else the monitor runs there. Now the first round finds the outage (each
    waits one timeout); after it, one request at a time probes Redis and the others get
    their 503 with Retry-After at once; after SIGCONT the monitor answers again and
    has said the outage once, and its end once.
    """
    monitor = start_server("monitor", **HANG_ENV)
    assert requests.get(monitor.base + "/emp/api/queue", timeout=10).status_code == 200
    first = {path: lambda p=path: timed("GET", monitor.base + p) for path in MONITOR_READS}
    paths = [MONITOR_READS[n % len(MONITOR_READS)] for n in range(MONITOR_BURST)]
    burst = {f"{n}: {path}": lambda p=path: timed("GET", monitor.base + p)
             for n, path in enumerate(paths)}
    freeze(True)
    stopped_at = time.monotonic()
    rounds = [at_once(first), at_once(burst)]
    time.sleep(max(0.0, SHORT_STOP_SECONDS - (time.monotonic() - stopped_at)))
    freeze(False)

    timings = assert_bounded_503s(rounds, "the monitor's answer")
    waited = [name for name, (seconds, _) in rounds[1].items() if seconds > AT_ONCE_SECONDS]
    assert len(waited) <= 1, (waited, timings[1])

    wait_for(lambda: requests.get(monitor.base + "/emp/api/queue", timeout=10).status_code
             == 200, timeout=20, message="the monitor to answer again")
    for path in MONITOR_READS[:-2]:
        assert requests.get(monitor.base + path, timeout=10).status_code == 200, path
    log = monitor.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert log.count("Redis unreachable") == 1, log[-3000:]
    assert log.count("Redis reachable again") == 1, log[-3000:]


#: Flower's own routes that reach Redis: its inspector (a refresh, a worker's page), its
#: result backend and its control API.
FLOWER_CALLS = (("GET", "/api/workers?refresh=1"), ("GET", "/api/task/result/nope"),
                ("GET", "/worker/celery@nope"), ("POST", "/api/task/revoke/nope"))
#: Scrapes in the same burst: the queue collector reads Redis.
SCRAPES = 3


def test_a_hung_redis_costs_flowers_pages_api_and_metrics_one_waiting_request_at_a_time(
        start_server, freeze) -> None:
    """Tried: the monitor (Flower's API opened, 2 s socket timeout), Redis stopped
    (SIGSTOP) for four timeouts (8 s; 15 s with the 5 s default); once a
    monitor read has found the outage, 17 of Flower's own Redis-reaching requests (an
    inspector refresh, a worker's page, a task result, a revoke) and 3 ``/metrics``
    scrapes at once; then Redis continued.

    Before the fix Flower's routes did not pass the monitor's outage gate: the refresh
    waited 5 s for its inspection and answered 200 with stale workers, a worker's page
    10 s for a 404, ``/api/task/result`` waited on Celery's result backend (120 s socket
    timeout) past the client's 15 s, as did the revoke (kombu retries a publish until
    Redis answers); every scrape held a thread 5 s; the log had a warning per inspect
    method per request. Now each of Flower's requests answers 503 with Retry-After, all
    but one at once; each scrape answers at once with ``emp_redis_up 0`` beside Flower's
    and the process's series; after SIGCONT ``emp_redis_up`` is 1 again, and the log says
    the outage once and its end once, with no inspect warning and no traceback.
    """
    monitor = start_server("monitor", FLOWER_UNAUTHENTICATED_API="1", **HANG_ENV)
    assert requests.get(monitor.base + "/api/workers?refresh=1", timeout=10).status_code == 200
    calls = [FLOWER_CALLS[n % len(FLOWER_CALLS)] for n in range(MONITOR_BURST - SCRAPES)]
    burst = {f"{n}: {method} {path}": lambda m=method, p=path: timed(m, monitor.base + p)
             for n, (method, path) in enumerate(calls)}
    scrapes = {f"scrape {n}": lambda: timed("GET", monitor.base + "/metrics")
               for n in range(SCRAPES)}
    freeze(True)
    stopped_at = time.monotonic()
    found = timed("GET", monitor.base + "/emp/api/queue")
    answers = at_once({**burst, **scrapes})
    time.sleep(max(0.0, SHORT_STOP_SECONDS - (time.monotonic() - stopped_at)))
    freeze(False)

    assert_bounded_503s([{"found": found}], "find the outage")
    timings = assert_bounded_503s([{name: answers[name] for name in burst}],
                                  "Flower's answer")
    waited = [name for name in burst if answers[name][0] > AT_ONCE_SECONDS]
    assert len(waited) <= 1, (waited, timings)
    for name in scrapes:
        seconds, reply = answers[name]
        assert isinstance(reply, requests.Response) and reply.status_code == 200, (name, reply)
        assert seconds < AT_ONCE_SECONDS, (name, round(seconds, 1))
        assert "\nemp_redis_up 0.0\n" in reply.text, reply.text[-2000:]
        assert "python_gc_objects_collected_total" in reply.text
        assert "emp_workers" not in reply.text
    replied = [answers[name][1] for name in burst]
    assert all("Redis is unreachable" in reply.text for reply in replied)

    wait_for(lambda: requests.get(monitor.base + "/api/workers?refresh=1", timeout=10)
             .status_code == 200, timeout=20, message="Flower's API to answer again")
    wait_for(lambda: "\nemp_redis_up 1.0\n" in requests.get(monitor.base + "/metrics",
                                                             timeout=10).text,
             timeout=20, message="a scrape to read the queue again")
    log = monitor.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "Inspect method" not in log, log[-3000:]
    assert log.count("Redis unreachable") == 1, log[-3000:]
    assert log.count("Redis reachable again") == 1, log[-3000:]


def test_a_job_state_call_on_a_hung_redis_costs_one_timeout_and_is_sent_once(
        client, redis_server, freeze) -> None:
    """Tried: a job claimed and started through a worker's ``QueueFunctions`` (its client:
    socket timeout, 2 s here, a held connection per thread), Redis stopped (SIGSTOP), the
    worker's next progress report (50 %), then Redis continued.

    Before the fix the report failed only after two socket timeouts (10 s): its held
    connection's, then a retry on a new connection, which sent the command again; once
    Redis went on it ran both, and the job's events had two progress updates for the
    one report. Now a timeout is not retried (a hung server would only be waited for
    again): one timeout, one update. (A reset connection is still retried: see
    ``tests/capability_router/test_queue_functions.py``.)
    """
    functions = QueueFunctions(make_client(redis_server.url, decode_responses=True,
                                           socket_timeout=HANG_TIMEOUT), "default")
    functions.client.ping()  # its pool has a connection, as a worker's has (other calls)
    profile = WorkerProfile(worker_id="hung-w", services=["echo"])
    functions.register_worker(profile)
    functions.enqueue("hung-job", JobSpec.from_fields({"service_required": "echo"}), "{}")
    claimed = functions.claim(profile.signature, profile.worker_id, 60_000)
    assert isinstance(claimed, Claimed)
    assert functions.start(claimed.job_id, claimed.attempt) == "ok"
    assert functions.progress(claimed.job_id, claimed.attempt, 10) == "ok"

    def reports_of_50() -> int:
        events = client.xrange(Keys("default").job_events(claimed.job_id))
        return sum(1 for _, fields in events if fields["event"] == "update_job_progress"
                   and json.loads(fields["data"])["progress"] == 50)

    freeze(True)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        functions.progress(claimed.job_id, claimed.attempt, 50)
    print(f"\na progress report on a hung Redis failed after {time.monotonic() - started:.1f} s")
    freeze(False)
    wait_for(reports_of_50, timeout=10, message="the report sent before SIGCONT to be run")
    time.sleep(1.0)  # any second copy was in Redis's socket buffers at SIGCONT: run by now
    assert reports_of_50() == 1
    assert functions.progress(claimed.job_id, claimed.attempt, 60) == "ok"
