"""What the monitor's pages show when a read fails, in a real headless Chromium.

A failed read must not leave an earlier answer on the page as if it were
the current one, and a login that ended must say so, not "Failed to fetch".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from playwright.sync_api import Error as PlaywrightError
from test_monitor_browser import open_page  # noqa: F401 - the page fixture
from tornado.web import create_signed_value

from capability_router.keys import NAMESPACES_KEY
from emp_tasks.producer import submit

UNSERVABLE = {"hardware": {"gpu_memory_gb": 99}}  # pending for good: no test worker has it


def test_a_failed_filter_does_not_leave_the_previous_filters_rows_as_its_answer(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        app: Any) -> None:
    """Tried: the Jobs page filtered on pool 'fast' (one job listed), then the Pool filter
    changed to 'gpu fast' (a 400: no pool name). Before, the error box showed the 400 and
    the 'fast' job's row stayed under it with "1–1 of 1", read as the answer to the bad
    filter. Now the rows are cleared and the table says the filter failed. Then a refresh
    of a good filter that fails (the monitor's 503, made by answering the page's read
    from the test): the rows stay, marked stale with the time they are from."""
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements=UNSERVABLE, pool="fast", app=app)
    row = f'#jobs-table tr[data-job-id="{job.id}"]'
    page = open_page(monitor.base + "/jobs?pool=fast")
    page.wait_for_selector(row)
    assert page.inner_text("#jobs-total") == "1–1 of 1"

    page.fill("#f-pool", "gpu fast")
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector("#emp-error:not(.d-none)")
    assert "invalid pool name 'gpu fast'" in page.inner_text("#emp-error")
    # The rows are cleared before the error shows.
    assert page.query_selector(row) is None, "the 'fast' rows shown as the bad filter's answer"
    assert page.query_selector("#jobs-table tr.jobs-failed") is not None
    assert "this filter failed" in page.inner_text("#jobs-table tbody")
    assert page.inner_text("#jobs-total") == ""

    # A good filter again, then its refresh fails: rows kept, marked stale.
    page.fill("#f-pool", "fast")
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector(row)
    page.wait_for_selector("#emp-error.d-none", state="attached")
    assert page.get_attribute("#jobs-table", "data-stale") == "false"
    page.route("**/emp/api/jobs?*", lambda route: route.fulfill(
        status=503, content_type="application/json",
        body='{"success": false, "error": "Redis is unreachable"}'))
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector('#jobs-table[data-stale="true"]')
    assert "Redis is unreachable" in page.inner_text("#emp-error")
    assert page.query_selector(row) is not None
    assert page.inner_text("#jobs-total").startswith("stale: rows as of ")
    page.unroute("**/emp/api/jobs?*")
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector('#jobs-table[data-stale="false"]')
    assert page.inner_text("#jobs-total") == "1–1 of 1"


def test_an_ended_oauth_session_says_so_and_offers_to_sign_in_again(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        app: Any) -> None:
    """Tried: the monitor with OAuth (``--auth``; the session cookie is what Flower's login
    handler sets after the provider's callback), the Jobs page open and listing a job, then
    the session cookie gone (as when it expires) and the page's next read (the Filter
    button). The read was redirected to /login, then to the provider (another site), and
    the error box said "Failed to fetch". Now it says "Session expired: reload to sign in",
    the link reloads the page, and Flower's login takes over (/login)."""
    secret = "cookie-secret-for-the-test"
    monitor = start_server("monitor", FLOWER_AUTH=".*@example.com",
                           FLOWER_COOKIE_SECRET=secret,
                           FLOWER_AUTH_PROVIDER="flower.views.auth.GoogleAuth2LoginHandler",
                           FLOWER_OAUTH2_KEY="client-id", FLOWER_OAUTH2_SECRET="client-secret",
                           FLOWER_OAUTH2_REDIRECT_URI="http://127.0.0.1/login")
    job = submit("simulation", {"steps": 1}, requirements=UNSERVABLE, app=app)
    session = create_signed_value(secret, "user", "ops@example.com").decode()
    page = open_page(None, storage_state={"cookies": [{
        "name": "user", "value": session, "domain": "127.0.0.1", "path": "/",
        "expires": -1, "httpOnly": True, "secure": False, "sameSite": "Lax"}], "origins": []})
    page.goto(monitor.base + "/jobs")
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{job.id}"]')
    assert page.is_hidden("#emp-error")

    page.context.clear_cookies()  # the session ends
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector("#emp-error:not(.d-none)")
    error = page.inner_text("#emp-error")
    assert error == "Session expired: reload to sign in", error
    assert page.get_attribute("#emp-error a.emp-sign-in", "href") == page.url
    # The link reloads the page, which Flower sends to its login.
    def to_login(reply: Any) -> bool:
        return reply.status == 302 and "/login" in (reply.headers.get("location") or "")

    with page.expect_response(to_login):
        page.click("#emp-error a.emp-sign-in")


def test_basic_auth_credentials_no_longer_good_say_the_session_ended(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        app: Any) -> None:
    """Tried: the monitor with basic auth, the Jobs page open with good credentials, then
    the monitor restarted on the same port with another password, and the page's next
    read. Before: the error box said "Unauthorized", and the live stream, refused 401 on
    its reconnect, said "reconnecting…" for ever. Now both say the session ended and the
    error box offers to reload and sign in."""
    job = submit("simulation", {"steps": 1}, requirements=UNSERVABLE, app=app)
    first = start_server("monitor", FLOWER_BASIC_AUTH="ops:s3cret")
    page = open_page(first.base + "/jobs",
                     http_credentials={"username": "ops", "password": "s3cret"})
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{job.id}"]')
    first.kill()
    start_server("monitor", port=first.port, FLOWER_BASIC_AUTH="ops:changed")
    # While the monitor was down, the page's reads failed ("Failed to fetch"); the read
    # after it is back replaces that error with its own.
    page.click("#job-filters button[type=submit]")
    try:
        page.wait_for_function("document.getElementById('emp-error').textContent"
                               ".startsWith('Session expired')", timeout=10_000)
    except PlaywrightError:
        raise AssertionError(page.inner_text("#emp-error")) from None
    assert page.inner_text("#emp-error") == "Session expired: reload to sign in"
    page.wait_for_selector('#emp-live[data-state="ended"]', timeout=15_000)
    assert page.inner_text("#emp-live") == "session expired"


def test_a_pool_whose_figures_fail_does_not_show_the_previous_pools_charts(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        client: redis.Redis, app: Any) -> None:
    """Tried: the Pools page on pool 'default', then the 'fast' button while the monitor's
    read of 'fast' fails (a 500, made by answering the page's read from the test). Before,
    the error box showed above the 'default' charts and totals, read as 'fast''s figures.
    Now they are cleared and the page says the read failed; a failed refresh of the pool
    on show keeps its charts, dimmed (stale)."""
    for pool in ("default", "fast"):
        submit("simulation", {"steps": 1}, requirements=UNSERVABLE, pool=pool, app=app)
        # Known as the transport makes a pool known (the producer does it once a process:
        # an earlier test of this module already used 'fast').
        client.sadd(NAMESPACES_KEY, pool)
    monitor = start_server("monitor")
    page = open_page(monitor.base + "/pools?pool=default")
    page.wait_for_selector('#pools-charts[data-pool="default"] #chart-queue_depth')
    page.wait_for_selector("#pools-total-pending")
    page.route("**/emp/api/pools/*/metrics?*", lambda route: route.fulfill(
        status=500, content_type="application/json",
        body='{"success": false, "error": "Internal Server Error"}'))
    page.click('#pools-choice button[data-pool="fast"]')
    page.wait_for_selector("#emp-error:not(.d-none)")
    assert page.query_selector("#chart-queue_depth") is None, "default's charts shown as fast's"
    assert page.query_selector("#pools-total-pending") is None
    assert "reading fast (1h) failed" in page.inner_text("#pools-charts")

    page.unroute("**/emp/api/pools/*/metrics?*")
    page.click('#pools-choice button[data-pool="fast"]')
    page.wait_for_selector('#pools-charts[data-pool="fast"] #chart-queue_depth')
    page.route("**/emp/api/pools/*/metrics?*", lambda route: route.fulfill(
        status=503, content_type="application/json",
        body='{"success": false, "error": "Redis is unreachable"}'))
    page.click('#pools-choice button[data-pool="fast"]')
    page.wait_for_selector('#pools-charts[data-stale="true"]')
    assert page.query_selector('#pools-charts[data-pool="fast"] #chart-queue_depth') is not None


def test_the_live_stream_comes_back_after_the_monitor_answered_it_503(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        app: Any) -> None:
    """Tried: the Jobs page opened while the monitor answers its live stream (/emp/events)
    503, as it does while Redis is unreachable (answered from the test), then the stream
    answered again. An EventSource gives up for good on a 503: before, the page said
    "reconnecting…" for ever and never went live again. Now it tries again every few
    seconds and goes live once the stream answers."""
    monitor = start_server("monitor")
    refused: list[str] = []

    def unavailable(route: Any) -> None:
        refused.append(route.request.url)
        route.fulfill(status=503, body="Redis is unreachable", headers={"Retry-After": "1"})

    page = open_page(None)
    # Playwright routes no SharedWorker's requests: this page holds its stream in a
    # dedicated worker, as browsers without SharedWorker do (the shared one: below).
    page.add_init_script("delete window.SharedWorker")
    page.context.route("**/emp/events*", unavailable)
    page.goto(monitor.base + "/jobs")
    page.wait_for_selector('#emp-live[data-state="reconnecting"]', timeout=15_000)
    assert refused
    page.context.unroute("**/emp/events*")
    page.wait_for_selector('#emp-live[data-state="live"]', timeout=15_000)


def test_both_tabs_on_the_shared_live_stream_follow_a_monitor_restart(
        start_server: Callable[..., Any], open_page: Callable[..., Any]) -> None:  # noqa: F811
    """Tried: two tabs of one browser sharing the live stream (a SharedWorker), the
    monitor killed, then started again on its port. Both tabs said "reconnecting…", then
    went live again on the one stream."""
    monitor = start_server("monitor")
    jobs = open_page(monitor.base + "/jobs")
    queue = jobs.context.new_page()
    queue.goto(monitor.base + "/queue")
    queue.wait_for_selector('#emp-live[data-state="live"]', timeout=15_000)
    assert jobs.evaluate("typeof SharedWorker") == "function"
    monitor.kill()
    for tab in (jobs, queue):
        tab.wait_for_selector('#emp-live[data-state="reconnecting"]', timeout=15_000)
    start_server("monitor", port=monitor.port)
    for tab in (jobs, queue):
        tab.wait_for_selector('#emp-live[data-state="live"]', timeout=30_000)
