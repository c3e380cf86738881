"""The monitor while its Redis is down or hung: real redis-server stopped or killed, a real
monitor process, the pages in a real headless Chromium."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from test_monitor_browser import open_page  # noqa: F401 - the page fixture

from emp_tasks.local_redis import LocalRedis
from webapp.monitor.quiet import REPEATED
from webapp.outage import RETRY_AFTER_SECONDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Seconds Redis stays down: longer than the page's own give-up backoff reaches (2+4+8 s).
DOWN_SECONDS = 16.0
#: The monitor's Redis socket timeout, and the slack a loaded machine adds to it.
SOCKET_TIMEOUT, SLACK = 5.0, 1.5
#: Most a request waits for its 503 once the outage is known.
AT_ONCE_SECONDS = 1.0


def test_the_shared_live_stream_says_the_outage_and_is_back_within_retry_after(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        redis_server: LocalRedis) -> None:
    """Tried: two tabs (Jobs, Queue) sharing the live stream (the SharedWorker), Redis
    killed for 16 s, then started again on its port. Before: the open stream stayed open
    (keep-alives, no events) and both tabs said "● live" for the whole outage; a new
    stream's 503 had no Retry-After; a refused stream was retried on the page's doubling
    wait (2, 4, 8, 16 s), not Retry-After, and its probe (a read of /emp/api/services,
    which needs no Redis) said nothing of the outage. Now the stream ends when its event
    log reads start failing, both tabs say "reconnecting…" and show the 503's reason,
    retry after its Retry-After, and go live (the reason gone) within that of Redis's
    return."""
    monitor = start_server("monitor")
    jobs = open_page(monitor.base + "/jobs")
    queue = jobs.context.new_page()
    queue.goto(monitor.base + "/queue")
    queue.wait_for_selector('#emp-live[data-state="live"]', timeout=15_000)
    assert jobs.evaluate("typeof SharedWorker") == "function"
    redis_server.stop(kill=True)
    try:
        down_at = time.monotonic()
        for tab in (jobs, queue):
            tab.wait_for_selector('#emp-live[data-state="reconnecting"]', timeout=10_000)
            tab.wait_for_selector("#emp-error:not(.d-none)", timeout=10_000)
            # The stream's probe says so, or a read of the page that met the outage first.
            banner = tab.inner_text("#emp-error")
            assert "cannot reach Redis" in banner or "redis unavailable" in banner, banner
        reply = requests.get(monitor.base + "/emp/events", timeout=10)
        assert reply.status_code == 503, reply.status_code
        assert reply.headers.get("Retry-After") == str(RETRY_AFTER_SECONDS), reply.headers
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
        for tab in (jobs, queue):
            assert tab.get_attribute("#emp-live", "data-state") == "reconnecting"
    finally:
        redis_server.start()
    up_at = time.monotonic()
    for tab in (jobs, queue):
        tab.wait_for_selector('#emp-live[data-state="live"]', timeout=40_000)
    took = time.monotonic() - up_at
    assert took < RETRY_AFTER_SECONDS + 3, f"live {took:.1f} s after Redis was back"
    for tab in (jobs, queue):
        tab.wait_for_selector("#emp-error.d-none", state="attached", timeout=5_000)
    log = monitor.log()
    assert log.count("Redis unreachable") == 1, log
    assert "Traceback" not in log, log


def answer(url: str, since: float) -> tuple[float, float, Any]:
    """(seconds after ``since`` it was sent, seconds it took, its status or exception)."""
    sent = time.monotonic()
    try:
        reply: Any = requests.get(url, timeout=30).status_code
    except requests.RequestException as exc:
        reply = type(exc).__name__
    return round(sent - since, 1), round(time.monotonic() - sent, 1), reply


def test_a_worker_page_that_finds_a_hung_redis_waits_one_timeout(
        start_server: Callable[..., Any], redis_server: LocalRedis) -> None:
    """Tried: the monitor, Redis stopped (SIGSTOP), then a worker's page (Flower's
    ``/worker/<name>``) as the first request. Before: 503 after 10 s, two socket timeouts
    (the inspection's broadcast, then a ping to tell a hung Redis from a pooled connection
    a restart had closed). Now one: a broadcast that timed out is the outage itself."""
    monitor = start_server("monitor")
    assert requests.get(monitor.base + "/emp/api/queue", timeout=10).status_code == 200
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        sent, took, reply = answer(monitor.base + "/worker/celery@nope", time.monotonic())
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert reply == 503, reply
    assert took < SOCKET_TIMEOUT + SLACK, f"the worker page took {took} s: {monitor.log()}"


def test_refreshes_in_a_hung_redis_first_seconds_pay_one_timeout_not_one_each(
        start_server: Callable[..., Any], redis_server: LocalRedis) -> None:
    """Tried: the monitor, Redis stopped (SIGSTOP); three reads of the Queue view sent 0, 1
    and 2 s after (refreshes, or three tabs), then, one after the other, three loads of a
    worker's page (``/worker/<name>``, Flower's) and three Queue reads. Before: the three
    staggered reads each waited their own socket timeout, answering 503 at 5, 6 and 7 s;
    each later sequential request was the outage's one probe of its moment and waited
    5 s too (worker page: 10, 5, 5 s when first; queue: 5, 5, 5 s). Now the reads in
    flight answer 503 as soon as the first finds the outage (all by ~5 s), and after a
    probe has waited out the hung Redis none is sent for Retry-After: the later requests
    answer 503 at once. Redis continued: the monitor answers, one outage line each way."""
    monitor = start_server("monitor")
    queue, worker = monitor.base + "/emp/api/queue", monitor.base + "/worker/celery@nope"
    assert requests.get(queue, timeout=10).status_code == 200
    assert redis_server.process is not None
    pid = redis_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        staggered: list[tuple[float, float, Any]] = []
        threads = []
        for _ in range(3):
            threads.append(threading.Thread(
                target=lambda: staggered.append(answer(queue, stopped_at))))
            threads[-1].start()
            time.sleep(1.0)
        for thread in threads:
            thread.join()
        in_turn = {f"{n}: {url}": answer(url, stopped_at)
                   for n, url in enumerate([worker] * 3 + [queue] * 3)}
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"\n(sent at, took, answer) while Redis hung: staggered {sorted(staggered)}, "
          f"in turn {in_turn}")
    assert all(reply == 503 for _, _, reply in staggered), staggered
    late = [(sent, took) for sent, took, _ in staggered if sent + took > SOCKET_TIMEOUT + SLACK]
    assert not late, f"answered after the first had found the outage: {late}"
    assert all(reply == 503 for _, _, reply in in_turn.values()), in_turn
    slow = {name: took for name, (_, took, _) in in_turn.items() if took > AT_ONCE_SECONDS}
    assert not slow, f"waited on a Redis known to hang: {slow}"

    deadline = time.monotonic() + 20
    while requests.get(queue, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the monitor did not answer again"
        time.sleep(0.5)
    log = monitor.log()
    assert log.count("Redis unreachable") == 1, log
    assert log.count("Redis reachable again") == 1, log
    assert "Traceback" not in log, log


#: The filter's debug line for a repeat it dropped (kombu's reconnect loop logs each of its
#: tries only as "Broker connection error ...", which the filter drops after the first).
DROPPED = "dropped a repeated line of"
#: One line per failed try of Flower's event capture, at debug level (Flower logs the
#: error again after its "Failed to capture events" line): the tries the filter hides.
CAPTURE_TRY = re.compile(r"^\[D [^\]]* events:\d+\] .*Connection refused", re.M)


def test_flower_says_once_per_outage_that_it_cannot_enable_events(
        start_server: Callable[..., Any], redis_server: LocalRedis) -> None:
    """Tried: the monitor (Flower at debug level, which logs each failed try of its event
    capture again, and the filter each repeat it drops), Redis killed until two tries had
    failed (two capture lines, or a dropped repeat: kombu's reconnect loop logs its tries
    only as lines the filter drops; one clean-clone run saw a single capture line in 45 s)
    and enabling events had failed, then started again. Before: Flower logged "Failed to enable
    events: ..." every ~10 s while Redis was down and "Failed to capture events: ..." once
    per reconnect try (2 enable and 3 capture lines in one 25 s hang). Now the first line
    of each kind passes, the others are dropped, and one line says when enabling events
    works again. Killed, not stopped (SIGSTOP): on a hung Redis each of Flower's tries
    could hang in kombu's publish retry, logging nothing (the test then proved nothing);
    a refused connection fails every try within kombu's connect timeout."""
    monitor = start_server("monitor", FLOWER_LOGGING="debug")
    log = monitor.log

    deadline = time.monotonic() + 15
    while "Capturing events" not in log():
        assert time.monotonic() < deadline, log()
        time.sleep(0.2)
    redis_server.stop(kill=True)
    try:
        deadline = time.monotonic() + 45  # capture retries ~2-6 s apart, enable every ~10 s
        while (len(CAPTURE_TRY.findall(log())) + log().count(DROPPED) < 2
               or "Failed to enable events" not in log()):
            assert time.monotonic() < deadline, log()
            time.sleep(0.2)
    finally:
        redis_server.start()
    deadline = time.monotonic() + 20  # Flower's next try (every 5 s, after the one under way)
    while "enabling Celery events works again" not in log():
        assert time.monotonic() < deadline, log()
        time.sleep(0.2)
    text = log()
    assert all(text.count(kind) <= 1 for kind in REPEATED), text
    assert text.count("enabling Celery events works again") == 1, text
