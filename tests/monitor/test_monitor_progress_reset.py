"""A job sent back to pending shows no progress on the monitor's pages: the record's is
cleared (queue library release 25), and the open pages, which draw from live events,
must not keep the dead run's bar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conftest import wait_for
from emp_tasks.producer import get_job, submit


@pytest.mark.timeout(120)
def test_a_requeued_jobs_bar_goes_back_to_zero_on_its_page_and_in_the_jobs_list(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        browser: Any, app: Any) -> None:
    """Tried: a 10-step simulation job runs on w1 with its page and the Jobs list open;
    once its bar reads 20% or more w1 is killed and the job is requeued from its page
    (no worker left, so it stays pending). Before: the job page's bar and the list's row
    kept the dead run's percentage (the page's status helper did not know
    ``job_released``/``job_resubmitted``, and no page reset the bar); now both read 0%
    while the job waits."""
    worker = start_worker("w1")
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 10, "duration": 20}, app=app)
    # bypass_csp: wait_for_function compiles its predicate in the page (as the other tests)
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    try:
        _check(context, monitor, worker, job, app)
    finally:
        context.close()


def _check(context: Any, monitor: Any, worker: Any, job: Any, app: Any) -> None:
    errors: list[str] = []
    page, listing = context.new_page(), context.new_page()
    for tab, path in ((page, f"/jobs/{job.id}"), (listing, "/jobs")):
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(monitor.base + path)
        tab.wait_for_selector('#emp-live[data-state="live"]', timeout=15_000)
    row = f'tr[data-job-id="{job.id}"]'
    listing.wait_for_selector(row, timeout=20_000)
    wait_for(lambda: (get_job(job.id, app=app).get("progress") or 0) >= 20, timeout=60,
             message="w1 to report progress")
    page.wait_for_function(
        "() => parseInt(document.getElementById('job-progress').textContent) >= 20",
        timeout=10_000)
    listing.wait_for_function(
        f"() => parseInt(document.querySelector('{row} .job-progress').textContent) >= 20",
        timeout=10_000)
    worker.kill()
    page.click("#job-requeue")
    page.wait_for_selector('#job-status[data-status="pending"]', timeout=10_000)
    listing.wait_for_selector(f'{row} [data-status="pending"]', timeout=10_000)
    assert get_job(job.id, app=app).get("progress") is None
    assert page.inner_text("#job-progress").strip() == "0%"
    assert listing.inner_text(f"{row} .job-progress").strip() == "0%"
    assert not errors, errors
