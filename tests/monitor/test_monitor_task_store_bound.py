"""The task history ``emp monitor`` keeps in memory (Flower's event state) stays at its
default bound when more jobs than that run, with real worker events.

Measured first (``bench/production_day.py --quick`` with the monitor under
tracemalloc, snapshots every 30 s): the monitor's growth from minute 1 to the
end was Flower's task store filling (``Task`` fields, its search index, the
task heap's entries: ~7 KB traced per task), from ~2,000 tasks towards the
10,000 it kept by then; the store was not full when the load ended, so its
memory never levelled off inside the run.
"""

from __future__ import annotations

import re

import pytest
import requests

from conftest import wait_for

pytestmark = pytest.mark.timeout(300)

#: The bound the monitor is meant to keep by default (``--max_tasks`` / FLOWER_MAX_TASKS).
BOUND = 2_000
SUCCEEDED = re.compile(r'^flower_events_total\{[^}]*type="task-succeeded"[^}]*\} (\S+)$', re.M)


def succeeded_events(base: str) -> int:
    """``task-succeeded`` events the monitor's Flower state has applied (its counter)."""
    text = requests.get(base + "/metrics", timeout=30).text
    return int(sum(float(n) for n in SUCCEEDED.findall(text)))


def test_the_monitor_keeps_at_most_its_default_bound_of_tasks(start_server, start_worker,
                                                               app) -> None:
    """Tried: a monitor with its default options and a worker (threads, 20 slots), then
    2,500 echo jobs, the monitor's Flower state counted through Flower's task API once
    it had applied every job's ``task-succeeded``.

    Before: the default bound was 10,000, so the monitor held all 2,500 tasks (the first
    job's still there), and at the production day's rate it grew ~10 MB every 30 s for
    the first 10,000 jobs, more than the whole rest of the process. Now it holds at most
    2,000, the oldest gone (its job page reads Redis, not this store)."""
    total = BOUND + 500
    monitor = start_server("monitor", FLOWER_UNAUTHENTICATED_API="true",
                           EMP_METRICS_PUBLIC="1")
    start_worker("store-bound", args=["-P", "threads", "-c", "20"])
    first = app.send_task("emp.echo", kwargs={"n": 0}).id
    # Flower turns the worker's events on within a few seconds: wait for the first job.
    wait_for(lambda: requests.get(f"{monitor.base}/api/task/info/{first}",
                                  timeout=10).status_code == 200,
             timeout=60, every=0.5, message="the monitor seeing the first job")
    for n in range(1, total):
        app.send_task("emp.echo", kwargs={"n": n})
    wait_for(lambda: succeeded_events(monitor.base) >= total, timeout=240, every=1.0,
             message=f"the monitor applying {total} task-succeeded events")
    held = requests.get(monitor.base + "/api/tasks", timeout=60).json()
    assert len(held) <= BOUND, len(held)
    assert first not in held
    assert requests.get(f"{monitor.base}/api/task/info/{first}", timeout=10).status_code == 404
