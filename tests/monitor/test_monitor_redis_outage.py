"""The monitor while its Redis is down or hung: real redis-server stopped or killed, a real
monitor process, the pages in a real headless Chromium."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from test_monitor_browser import open_page  # noqa: F401 - the page fixture

from emp_tasks.local_redis import LocalRedis
from webapp.outage import RETRY_AFTER_SECONDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Seconds Redis stays down: longer than the page's own give-up backoff reaches (2+4+8 s).
DOWN_SECONDS = 16.0


def test_the_shared_live_stream_says_the_outage_and_is_back_within_retry_after(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        redis_server: LocalRedis) -> None:
    """Tried: two tabs (Jobs, Queue) sharing the live stream (the SharedWorker), Redis
    killed for 16 s, then started again on its port. Before: the open stream stayed open
    (keep-alives, no events) and both tabs said "● live" for the whole outage; a new
    stream's 503 had no Retry-After; a refused stream was retried on the page's doubling
    wait (2, 4, 8, 16 s), not Retry-After, and its probe (a read of /emp/api/services,
    which needs no Redis) said nothing of the outage. Now the stream ends when its event log reads start failing, both tabs say
    "reconnecting…" and show the 503's reason, retry after its Retry-After, and go live
    (the reason gone) within that of Redis's return."""
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
            assert "cannot reach Redis" in tab.inner_text("#emp-error")
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
