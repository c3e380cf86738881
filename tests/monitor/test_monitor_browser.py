"""The monitor driven in a real headless Chromium, against real workers, machines and Redis.

Each test starts ``emp monitor`` (Flower extended) as its own process and
looks at the pages the way an operator would: what appears, what moves,
what a click does, all without reloading the page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from playwright.sync_api import Error as PlaywrightError
from prometheus_client.parser import text_string_to_metric_families
from tornado.web import create_signed_value

from capability_router.registry import WorkerRegistry
from conftest import ROOT, wait_for
from emp_tasks.producer import cancel, get_job, job_events, submit
from machine.reaper import reap_gone_machines

#: Where the README's screenshots go: ``EMP_SCREENSHOT_DIR=docs`` refreshes the README's
#: pictures; otherwise they land in the test's temporary directory, so a test run leaves the
#: tracked files alone.
SCREENSHOT_DIR = os.environ.get("EMP_SCREENSHOT_DIR")


def screenshot_dir(tmp_path: Path) -> Path:
    """The folder for this run's screenshots (relative EMP_SCREENSHOT_DIR: from the repo)."""
    folder = ROOT / SCREENSHOT_DIR if SCREENSHOT_DIR else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Factory: a new browser context and page at ``url``; fails the test on a script error."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_(url: str | None, live: bool = True, **context_options: Any) -> Any:
        # Playwright's wait_for_function compiles its predicate in the page, which the
        # monitor's Content Security Policy forbids; test_monitor_security_headers opens
        # its pages with bypass_csp=False to check the pages themselves under it.
        context_options.setdefault("bypass_csp", True)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, **context_options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{url}: {exc}"))
        if url is None:
            return page
        page.goto(url)
        if live:  # the event stream is open: later events reach the page
            page.wait_for_selector('#emp-live[data-state="live"]', timeout=15_000)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"script errors on the pages: {errors}"


def status_of(page: Any, selector: str) -> str | None:
    return page.evaluate(
        "s => { const b = document.querySelector(s); return b ? b.dataset.status : null; }",
        selector)


def test_a_job_submitted_from_the_form_appears_moves_and_completes_without_a_reload(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        open_page: Callable[..., Any], client: redis.Redis, app: Any) -> None:
    start_worker("w1", WORKER_GPU_MEMORY_GB="24")
    monitor = start_server("monitor")
    jobs_page = open_page(monitor.base + "/jobs")
    jobs_page.evaluate("window.__loadedOnce = 'still the same page'")
    form_page = open_page(monitor.base + "/submit")
    form_page.wait_for_selector("#s-service option[value], #s-service option", state="attached")
    form_page.select_option("#s-service", "simulation")
    form_page.fill("#s-priority", "70")
    form_page.fill("#s-payload", json.dumps({"steps": 12, "duration": 4.8}))
    form_page.fill("#s-requirements", json.dumps({"hardware": {"gpu_memory_gb": 8}}))
    form_page.click("#s-submit")
    job_id = form_page.wait_for_selector("#submitted-link").inner_text().strip()
    assert get_job(job_id, app=app)["priority"] == 70

    # The list page, opened before the job existed, shows it and follows it live.
    row = f'#jobs-table tr[data-job-id="{job_id}"]'
    jobs_page.wait_for_selector(row, timeout=10_000)
    seen: set[int] = set()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        value = jobs_page.get_attribute(f"{row} .progress", "aria-valuenow")
        seen.add(round(float(value or 0)))
        if status_of(jobs_page, f"{row} .job-status .badge") == "completed":
            break
        time.sleep(0.1)
    assert status_of(jobs_page, f"{row} .job-status .badge") == "completed"
    moving = sorted(v for v in seen if 0 < v < 100)
    assert len(moving) >= 2, f"progress seen on the list page: {sorted(seen)}"
    assert jobs_page.get_attribute(f"{row} .progress", "aria-valuenow") == "100"
    assert jobs_page.inner_text(f"{row} .job-worker") == "w1"
    assert jobs_page.evaluate("window.__loadedOnce") == "still the same page"
    # The form page's own list followed the same job to the end.
    wait_for(lambda: status_of(form_page, f'#submitted-table tr[data-job-id="{job_id}"] '
                                          ".job-status .badge") == "completed",
             timeout=10, message="the form page's row to complete")
    assert get_job(job_id, app=app)["status"] == "completed"
    # Flower's own pages are still there and see the same job and worker (Celery events).
    flower = open_page(monitor.base + "/tasks", live=False)
    flower.wait_for_selector(f"text={job_id}", timeout=20_000)
    flower.goto(monitor.base + "/workers")
    flower.wait_for_selector("text=w1@", timeout=20_000)


def test_the_form_refuses_bad_input_and_submits_nothing(
        start_server: Callable[..., Any], open_page: Callable[..., Any],
        client: redis.Redis) -> None:
    monitor = start_server("monitor")
    page = open_page(monitor.base + "/submit")
    page.wait_for_selector("#s-service option", state="attached")
    before = sorted(client.keys("emp:{*}:job:*"))
    # Tried: a payload that is not JSON, a priority out of range, an unknown requirement key.
    page.fill("#s-payload", "{steps: 3")
    page.click("#s-submit")
    assert "Payload is not valid JSON" in page.inner_text("#submit-result")
    page.fill("#s-payload", "{}")
    page.fill("#s-priority", "250")
    page.click("#s-submit")
    page.wait_for_function(
        "document.querySelector('#submit-result').textContent.includes('priority')")
    page.fill("#s-priority", "50")
    page.fill("#s-requirements", json.dumps({"hardware": {"gpu_memory_gb": "lots"}}))
    page.click("#s-submit")
    page.wait_for_function(
        "document.querySelector('#submit-result').textContent.includes('gpu_memory_gb')")
    assert page.query_selector("#submitted-table tbody tr") is None
    assert sorted(client.keys("emp:{*}:job:*")) == before


def test_a_form_job_for_a_pool_nobody_serves_is_warned_and_the_pools_page_says_why(
        start_server: Callable[..., Any], open_page: Callable[..., Any],
        client: redis.Redis) -> None:
    """Tried: the submit form with pool ``nosuch-m``, which no live worker serves. Before,
    the form said "Submitted <id>" and nothing else (``/emp/api/submit`` answered no
    ``warnings``, where POST /api/jobs warns), and the Pools page showed the pool's
    charts with nothing saying why its job waits (/api/pools has a ``waiting_reason``).
    Now the form lists the warning under the id, and the Pools page shows the reason."""
    monitor = start_server("monitor")
    page = open_page(monitor.base + "/submit")
    page.wait_for_selector("#s-service option", state="attached")
    page.select_option("#s-service", "simulation")
    page.fill("#s-pool", "nosuch-m")
    page.click("#s-submit")
    job_id = page.wait_for_selector("#submitted-link").inner_text().strip()
    assert client.hget(f"emp:{{nosuch-m}}:job:{job_id}", "status") == "pending"
    warned = page.wait_for_selector("#submit-warnings li", timeout=5_000).inner_text()
    assert warned == "no live worker serves pool nosuch-m: the job waits until one does"
    pools = open_page(monitor.base + "/pools?pool=nosuch-m")
    reason = pools.wait_for_selector("#pools-waiting:not(.d-none)", timeout=10_000).inner_text()
    assert reason.startswith("nosuch-m: no live worker serves pool nosuch-m: its 1 "
                             "unfinished job(s) wait until one does"), reason
    shown = requests.get(monitor.base + "/emp/api/pools", timeout=10).json()
    assert shown["waiting"]["nosuch-m"] == reason.removeprefix("nosuch-m: "), shown


def test_cancel_on_the_job_page_ends_a_running_job(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        open_page: Callable[..., Any], app: Any) -> None:
    start_worker("w1")
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 100, "duration": 50}, app=app)
    page = open_page(f"{monitor.base}/jobs/{job.id}")
    page.wait_for_selector('#job-status[data-status="in_progress"]', timeout=20_000)
    page.wait_for_function("Number(document.querySelector('#job-progress')"
                           ".parentElement.getAttribute('aria-valuenow')) > 0")
    page.click("#job-cancel")
    page.wait_for_selector('#job-status[data-status="cancelled"]', timeout=10_000)
    page.wait_for_selector('#job-timeline tr[data-event="job_cancelled"]', timeout=10_000)
    assert page.is_disabled("#job-cancel") and page.is_enabled("#job-retry")
    assert get_job(job.id, app=app)["status"] == "cancelled"
    # The worker stopped running it (one slot, -c 1): a new job runs at once.
    echo = submit("echo", {"after": "cancel"}, app=app)
    assert echo.get(timeout=15)["echo"] == {"after": "cancel"}
    progress_after = [e for e in job_events(job.id, app=app)
                      if e["event"] == "update_job_progress"]
    assert progress_after and progress_after[-1]["data"]["progress"] < 100


def test_many_monitor_tabs_share_one_live_stream_and_every_tab_still_loads_and_acts(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        browser: Any, app: Any) -> None:
    """Tried: one browser with seven monitor tabs open (Queue, Jobs, Machines, Pools,
    Webhooks, a job, Submit), then Cancel on the job's tab. Before: each tab held its own
    /emp/events stream, and Chromium opens at most six HTTP/1.1 connections to a host: the
    seventh tab never finished loading (timed out) and every tab's reads and actions
    queued behind the streams. Now the tabs share one stream (a SharedWorker)."""
    start_worker("w1")
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 100, "duration": 50}, app=app)
    context = browser.new_context(bypass_csp=True)
    try:
        tabs = []
        for path in ("/queue", "/jobs", "/machines", "/pools", "/webhooks",
                     f"/jobs/{job.id}", "/submit"):
            tab = context.new_page()
            tab.goto(monitor.base + path, timeout=10_000)
            tab.wait_for_selector('#emp-live[data-state="live"]', timeout=10_000)
            tabs.append(tab)
        job_tab = tabs[5]
        job_tab.wait_for_selector('#job-status[data-status="in_progress"]', timeout=20_000)
        job_tab.click("#job-cancel")
        job_tab.wait_for_selector('#job-status[data-status="cancelled"]', timeout=10_000)
        # The other tabs hear it on the one shared stream.
        tabs[1].wait_for_selector(f'tr[data-job-id="{job.id}"] [data-status="cancelled"]',
                                  timeout=10_000)
        assert get_job(job.id, app=app)["status"] == "cancelled"
    finally:
        context.close()


def test_requeue_and_retry_on_the_job_page(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        open_page: Callable[..., Any], app: Any) -> None:
    start_worker("w1")
    start_worker("w2")
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 8, "duration": 4}, app=app)
    page = open_page(f"{monitor.base}/jobs/{job.id}")
    page.wait_for_selector('#job-status[data-status="in_progress"]', timeout=20_000)
    first = get_job(job.id, app=app)
    page.click("#job-requeue")
    # Back in line, then taken again: a second attempt that runs to the end.
    page.wait_for_selector('#job-timeline tr[data-event="job_requeued"]', timeout=10_000)
    page.wait_for_selector('#job-status[data-status="completed"]', timeout=40_000)
    record = get_job(job.id, app=app)
    assert first["attempts"] == 1 and record["attempts"] == 2
    assert page.inner_text('#job-fields [data-field="attempts"]') == "2"
    # A completed job cannot be retried or requeued: the buttons say so and so does the server.
    assert page.is_disabled("#job-retry") and page.is_disabled("#job-requeue")
    refused = requests.post(f"{monitor.base}/emp/api/jobs/{job.id}/retry", timeout=10)
    assert refused.status_code == 409 and "completed" in refused.json()["error"]
    # Cancel a pending job that no worker can run, then retry it from its page.
    stuck = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                   app=app)
    page = open_page(f"{monitor.base}/jobs/{stuck.id}")
    page.wait_for_selector('#job-status[data-status="pending"]')
    page.click("#job-cancel")
    page.wait_for_selector('#job-status[data-status="cancelled"]')
    page.click("#job-retry")
    page.wait_for_selector('#job-status[data-status="pending"]')
    page.wait_for_selector('#job-timeline tr[data-event="job_cancelled"]')
    assert get_job(stuck.id, app=app)["status"] == "pending"


def _metric(text: str, name: str, **labels: str) -> list[float]:
    return [sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]


def test_queue_flags_an_unservable_class_and_machines_show_gpus_workers_and_jobs(
        start_machine: Callable[..., Any], start_worker: Callable[..., Any],
        start_server: Callable[..., Any], open_page: Callable[..., Any], app: Any,
        client: redis.Redis, tmp_path: Path) -> None:
    machine = start_machine("gpu-box-1")
    machine.wait_ready()
    monitor = start_server("monitor")
    # Two 24 GB workers: two long jobs keep them busy, a third waits its turn,
    # and one needs 80 GB, which no live worker has.
    running = [submit("simulation", {"steps": 60, "duration": 60}, priority=60, app=app)
               for _ in range(2)]
    waiting = submit("simulation", {"steps": 2, "duration": 1},
                     requirements={"hardware": {"gpu_memory_gb": 16}}, app=app)
    stuck = submit("simulation", {"steps": 2, "duration": 1},
                   requirements={"hardware": {"gpu_memory_gb": 80}}, priority=90, app=app)
    wait_for(lambda: all(get_job(j.id, app=app)["status"] == "in_progress" for j in running),
             timeout=30, message="both machine workers busy")

    queue = open_page(monitor.base + "/queue")
    flagged = queue.wait_for_selector('#queue-table tr[data-unservable="true"]')
    assert "hardware.gpu_memory_gb >= 80" in flagged.inner_text()
    assert "UNSERVABLE" in flagged.inner_text().upper()
    assert "cannot be served by any live worker" in queue.inner_text("#queue-alert")
    servable = queue.wait_for_selector('#queue-table tr[data-unservable="false"]')
    assert "gpu-box-1-simulation-0" in servable.inner_text()
    assert "gpu-box-1-simulation-1" in servable.inner_text()
    pictures = screenshot_dir(tmp_path)
    queue.screenshot(path=str(pictures / "monitor-queue.png"), full_page=True)

    machines = open_page(monitor.base + "/machines")
    card = machines.wait_for_selector('.emp-machine[data-machine-id="gpu-box-1"]')
    text = card.inner_text()
    assert "online" in text and text.count("24 GB") >= 4  # 2 GPUs and 2 worker profiles
    for job in running:
        machines.wait_for_selector(f'.emp-machine a[href$="/jobs/{job.id}"]')
    machines.screenshot(path=str(pictures / "monitor-machines.png"), full_page=True)

    # Prometheus, next to Flower's own metrics: depth and workers per class, waits, claims.
    scrape = requests.get(monitor.base + "/metrics", timeout=10).text
    assert "flower_events_total" in scrape or "flower_" in scrape
    assert _metric(scrape, "emp_queue_depth", pool="default", service="simulation")
    assert 0.0 in _metric(scrape, "emp_queue_class_workers", pool="default",
                          service="simulation")
    assert _metric(scrape, "emp_job_wait_seconds_count", pool="default")[0] >= 2

    # A worker with 80 GB joins: without a reload the flag goes and the job runs.
    start_worker("big-gpu", WORKER_GPU_MEMORY_GB="80")
    queue.wait_for_selector('#queue-table tr[data-unservable="true"]', state="detached",
                            timeout=20_000)
    assert stuck.get(timeout=30)["success"] is True
    assert get_job(waiting.id, app=app)["status"] in ("pending", "assigned", "in_progress",
                                                      "completed")
    machines.wait_for_selector('.emp-machine [data-worker-id="big-gpu"]', timeout=15_000)
    assert WorkerRegistry(client).workers()

    # The machine dies and is reaped: its card turns to gone, still without a reload.
    machine.kill()
    wait_for(lambda: machine.leftovers() == [], timeout=20, message="the machine's processes")
    wait_for(lambda: reap_gone_machines(client, stale_after_seconds=1.5), timeout=20,
             every=0.5, message="the reaper to mark gpu-box-1 gone")
    gone = machines.wait_for_selector('.emp-machine[data-machine-id="gpu-box-1"]'
                                      '[data-status="gone"]', timeout=15_000)
    assert "gone" in gone.inner_text()


PROTECTED_GETS = ["/machines", "/queue", "/jobs", "/jobs/{job}", "/submit", "/webhooks",
                  "/pools", "/emp/api/machines", "/emp/api/queue", "/emp/api/jobs",
                  "/emp/api/jobs/{job}", "/emp/api/services", "/emp/api/webhooks",
                  "/emp/api/pools", "/emp/api/pools/default/metrics", "/emp/events"]
PROTECTED_POSTS = ["/emp/api/submit", "/emp/api/jobs/{job}/cancel", "/emp/api/jobs/{job}/retry",
                   "/emp/api/jobs/{job}/requeue", "/emp/api/webhooks/some-hook/reconnect"]


def test_with_basic_auth_the_new_pages_and_actions_refuse_anonymous_requests(
        start_server: Callable[..., Any], open_page: Callable[..., Any], app: Any,
        client: redis.Redis) -> None:
    monitor = start_server("monitor", FLOWER_BASIC_AUTH="ops:s3cret")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    keys_before = sorted(client.keys("emp:{*}:job:*"))
    for who, auth in (("anonymous", None), ("wrong password", ("ops", "guess"))):
        for path in PROTECTED_GETS:
            reply = requests.get(monitor.base + path.format(job=job.id), auth=auth, timeout=10,
                                 stream=True)
            assert reply.status_code == 401, f"{who} GET {path}: {reply.status_code}"
            assert reply.headers["WWW-Authenticate"].startswith("Basic")
            reply.close()
        # Tried: every action, anonymously and with a wrong password; nothing may change.
        for path in PROTECTED_POSTS:
            reply = requests.post(monitor.base + path.format(job=job.id), auth=auth, timeout=10,
                                  json={"service_required": "echo", "payload": {}})
            assert reply.status_code == 401, f"{who} POST {path}: {reply.status_code}"
    assert get_job(job.id, app=app)["status"] == "pending"
    assert sorted(client.keys("emp:{*}:job:*")) == keys_before
    # Flower's own pages are guarded the same way.
    assert requests.get(monitor.base + "/", timeout=10).status_code == 401

    # In a browser: anonymous gets 401; with the credentials every view works, live.
    anonymous = open_page(None)
    try:
        response = anonymous.goto(monitor.base + "/queue")
        assert response.status == 401
    except PlaywrightError as exc:  # Chromium gives up on the challenge it cannot answer
        assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
    operator = open_page(monitor.base + "/queue",
                         http_credentials={"username": "ops", "password": "s3cret"})
    operator.wait_for_selector('#queue-table tr[data-unservable="true"]')
    operator.goto(f"{monitor.base}/jobs/{job.id}")
    operator.wait_for_selector('#emp-live[data-state="live"]')
    operator.click("#job-cancel")
    operator.wait_for_selector('#job-status[data-status="cancelled"]')
    assert get_job(job.id, app=app)["status"] == "cancelled"


def test_read_only_monitor_refuses_actions(
        start_server: Callable[..., Any], open_page: Callable[..., Any], app: Any) -> None:
    monitor = start_server("monitor", FLOWER_READ_ONLY="true")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    # Tried: cancel, requeue and a submission against a --read_only monitor.
    for path in ("/emp/api/jobs/{job}/cancel", "/emp/api/jobs/{job}/requeue", "/emp/api/submit"):
        reply = requests.post(monitor.base + path.format(job=job.id), timeout=10,
                              json={"service_required": "echo", "payload": {}})
        assert reply.status_code == 403 and "read-only" in reply.json()["error"]
    assert get_job(job.id, app=app)["status"] == "pending"
    page = open_page(f"{monitor.base}/jobs/{job.id}")
    page.wait_for_selector('#job-status[data-status="pending"]')
    assert page.query_selector("#job-cancel") is None


def test_webhooks_page_shows_a_disconnected_hook_and_reconnect_delivers(
        start_server: Callable[..., Any], open_page: Callable[..., Any],
        receiver: Callable[..., Any], app: Any) -> None:
    from test_machines_webhooks_data import FAST_HOOKS

    hooks = start_server("webhooks", **FAST_HOOKS)
    monitor = start_server("monitor")
    sink = receiver(start=False)  # not listening yet: deliveries fail until it starts
    reply = requests.post(hooks.base + "/webhooks", timeout=10, json={
        "url": sink.url + "/hook", "events": ["job_submitted"], "secret": "whsec-x"})
    hook_id = reply.json()["data"]["id"]
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    page = open_page(monitor.base + "/webhooks")
    row = f'#hooks-table tr[data-hook-id="{hook_id}"]'
    page.wait_for_selector(f'{row}[data-health="disconnected"]', timeout=30_000)
    assert "whsec-x" not in page.content()
    sink.start()
    page.click(f"{row} .hook-reconnect")
    page.wait_for_selector(f'{row}[data-health="connected"]', timeout=15_000)
    delivered = page.wait_for_selector("#deliveries-table td.text-success", timeout=15_000)
    assert delivered.inner_text() == "delivered"
    assert job.id in page.inner_text("#deliveries-table")
    assert [r.payload["data"]["job_id"] for r in sink.delivered()] == [job.id]


def test_monitor_under_a_url_prefix(start_server: Callable[..., Any],
                                    open_page: Callable[..., Any], app: Any) -> None:
    monitor = start_server("monitor", FLOWER_URL_PREFIX="ops/monitor")
    job = submit("echo", {"n": 1}, requirements={"models": ["nowhere"]}, app=app)
    other = submit("simulation", {"steps": 1}, requirements={"models": ["nowhere"]}, app=app)
    page = open_page(monitor.base + "/ops/monitor/jobs?service=echo")
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{job.id}"]')
    assert page.query_selector(f'#jobs-table tr[data-job-id="{other.id}"]') is None
    page.fill("#f-service", "")
    page.select_option("#f-status", "pending")
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{other.id}"]')
    assert page.url.endswith("/ops/monitor/jobs?status=pending")
    assert "1–2 of 2" in page.inner_text("#jobs-total")
    page.click(f'#jobs-table tr[data-job-id="{job.id}"] a')
    page.wait_for_selector('#job-status[data-status="pending"]')
    assert page.url == f"{monitor.base}/ops/monitor/jobs/{job.id}"
    page.click("#emp-nav-queue")
    page.wait_for_selector('#queue-table tr[data-unservable="true"]')


def test_with_oauth_pages_need_a_login_and_actions_need_the_xsrf_token(
        start_server: Callable[..., Any], open_page: Callable[..., Any], app: Any) -> None:
    secret = "cookie-secret-for-the-test"
    monitor = start_server("monitor", FLOWER_AUTH=".*@example.com",
                           FLOWER_COOKIE_SECRET=secret)
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)

    def session_of(email: str) -> str:  # what Flower's login handler sets after OAuth
        return create_signed_value(secret, "user", email).decode()

    # No session, or a user the --auth pattern does not admit: pages and reads go to
    # Flower's login, actions are refused.
    for cookies in ({}, {"user": session_of("eve@elsewhere.org")}):
        for path in ("/queue", "/emp/api/queue", f"/emp/api/jobs/{job.id}", "/emp/events"):
            reply = requests.get(monitor.base + path, cookies=cookies, allow_redirects=False,
                                 timeout=10)
            assert reply.status_code == 302 and "/login" in reply.headers["Location"], path
        reply = requests.post(f"{monitor.base}/emp/api/jobs/{job.id}/cancel", cookies=cookies,
                              timeout=10)
        assert reply.status_code == 403
    # Signed in, but a POST without the XSRF token (a forged cross-site form) is refused.
    operator = {"user": session_of("ops@example.com")}
    assert requests.get(monitor.base + "/emp/api/queue", cookies=operator,
                        timeout=10).status_code == 200
    forged = requests.post(f"{monitor.base}/emp/api/jobs/{job.id}/cancel", cookies=operator,
                           timeout=10)
    assert forged.status_code == 403 and get_job(job.id, app=app)["status"] == "pending"
    # The page sends the token with its actions: cancel from the job page works.
    page = open_page(None, storage_state={"cookies": [{
        "name": "user", "value": operator["user"], "domain": "127.0.0.1", "path": "/",
        "expires": -1, "httpOnly": True, "secure": False, "sameSite": "Lax"}], "origins": []})
    page.goto(f"{monitor.base}/jobs/{job.id}")
    page.wait_for_selector('#emp-live[data-state="live"]')
    page.click("#job-cancel")
    page.wait_for_selector('#job-status[data-status="cancelled"]')
    assert get_job(job.id, app=app)["status"] == "cancelled"


def test_event_stream_resumes_after_the_last_event_id(
        start_server: Callable[..., Any], app: Any) -> None:
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    cancel(job.id, app=app)
    submitted, cancelled = job_events(job.id, app=app)
    assert (submitted["event"], cancelled["event"]) == ("job_submitted", "job_cancelled")
    # A page that saw job_submitted and lost its connection gets exactly what followed.
    with requests.get(monitor.base + "/emp/events", stream=True, timeout=10,
                      headers={"Last-Event-ID": submitted["id"]}) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        lines = reply.iter_lines(decode_unicode=True)
        frame: dict[str, str] = {}
        for line in lines:
            if line.startswith(("id: ", "data: ")):
                key, _, value = line.partition(": ")
                frame[key] = value
            if "data" in frame:
                break
    message = json.loads(frame["data"])
    assert frame["id"] == cancelled["id"] == message["event_id"]
    assert message["type"] == "job_cancelled" and message["job_id"] == job.id


def test_the_json_endpoints_refuse_bad_input_and_change_nothing(
        start_server: Callable[..., Any], app: Any, client: redis.Redis) -> None:
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    def records() -> dict[str, dict[str, str]]:
        return {key: client.hgetall(key)
                for key in client.scan_iter("emp:{*}:job:*", _type="hash")}

    before = records()
    tried = [  # (method, path, body or raw text, status, words the error must contain)
        ("GET", "/emp/api/jobs?status=done", None, 400, "status 'done' is not one of"),
        ("GET", "/emp/api/jobs?limit=0", None, 400, "limit must be between 1 and 200"),
        ("GET", "/emp/api/jobs?offset=-1", None, 400, "offset must be between"),
        ("GET", "/emp/api/jobs?limit=ten", None, 400, "limit must be a whole number"),
        # Before: Python's int() took these as 3, 10 and 5 (the REST API refuses them).
        ("GET", "/emp/api/jobs?limit=%D9%A3", None, 400, "limit must be a whole number"),
        ("GET", "/emp/api/jobs?limit=1_0", None, 400, "limit must be a whole number"),
        ("GET", "/emp/api/jobs?limit=%2B5", None, 400, "limit must be a whole number"),
        ("GET", "/emp/api/jobs?offset=" + "9" * 5000, None, 400, "offset must be between"),
        ("GET", "/emp/api/jobs?colour=red", None, 400, "unknown query parameter 'colour'"),
        ("GET", "/emp/api/jobs/no-such-job", None, 404, "no job 'no-such-job'"),
        ("POST", "/emp/api/jobs/no-such-job/cancel", None, 404, "no job 'no-such-job'"),
        ("POST", "/emp/api/submit", "{not json", 400, "body is not JSON"),
        ("POST", "/emp/api/submit", [1, 2], 400, "body must be a JSON object"),
        ("POST", "/emp/api/submit", {"payload": {}}, 400, "service_required"),
        ("POST", "/emp/api/submit", {"service_required": "paint", "payload": {}}, 400, "paint"),
        ("POST", "/emp/api/submit", {"service_required": "echo", "priority": 101}, 400,
         "priority"),
        ("POST", "/emp/api/submit", {"service_required": "echo", "message_id": job.id}, 409,
         "already exists"),
        ("POST", f"/emp/api/jobs/{job.id}/retry", None, 409,
         "only a failed or cancelled job can be retried"),
        ("POST", f"/emp/api/jobs/{job.id}/requeue", None, 409,
         "only an assigned or in-progress job can be requeued"),
        ("POST", "/emp/api/webhooks/no-such-hook/reconnect", None, 404, "no webhook"),
    ]
    for method, path, body, status, words in tried:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
        reply = requests.request(method, monitor.base + path, timeout=10, **kwargs)
        assert reply.status_code == status, (method, path, body, reply.text)
        answer = reply.json()
        assert answer["success"] is False and words in answer["error"], (path, answer)
    assert records() == before


def test_a_terminate_flag_that_is_neither_on_nor_off_is_a_400_naming_it(
        start_server: Callable[..., Any], app: Any) -> None:
    """Tried: ``POST /emp/api/jobs/<id>/cancel?terminate=maybe`` (and ``terminate=yes``).
    Before, the monitor took only 1 and true as on and every other word as off: ``maybe``
    cancelled the job without terminating it (200), and so did ``yes``, silently. Now the
    flag takes the on/off words the settings take (``env.flag_value``): another word is a
    400 naming the parameter and the words, and the job is left as it was."""
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    path = f"{monitor.base}/emp/api/jobs/{job.id}/cancel"
    reply = requests.post(path, params={"terminate": "maybe"}, timeout=10)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == ("terminate must be one of 1, true, yes, on (on) or 0, "
                                     "false, no, off (off), got 'maybe'"), reply.text
    assert get_job(job.id, app=app)["status"] == "pending"
    reply = requests.post(path, params={"terminate": "Yes"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "cancelled", reply.text


def test_a_pool_filter_that_is_no_pool_name_is_a_400_naming_it(
        start_server: Callable[..., Any], open_page: Callable[..., Any], app: Any) -> None:
    """Tried: the Jobs page's Pool filter with a typo an operator makes ('gpu fast', with a
    space) and '{x}', and the same as ``/emp/api/jobs?pool=``. Each was a 500 "Internal
    Server Error" (and a traceback in the monitor's log). Now a 400 says what a pool name
    is, the page shows it, and a good filter still lists the pool's jobs."""
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 pool="fast", app=app)
    for bad in ("gpu fast", "{x}", "a" * 65):
        reply = requests.get(monitor.base + "/emp/api/jobs", params={"pool": bad}, timeout=10)
        assert reply.status_code == 400, (bad, reply.status_code, reply.text)
        assert f"invalid pool name {bad!r}" in reply.json()["error"], reply.text
    page = open_page(monitor.base + "/jobs")
    page.fill("#f-pool", "gpu fast")
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector("#emp-error:not(.d-none)")
    assert "invalid pool name 'gpu fast'" in page.inner_text("#emp-error")
    page.fill("#f-pool", "fast")
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector("#emp-error.d-none", state="attached")
    assert page.inner_text("#jobs-total") == "1–1 of 1"
    assert page.query_selector(f'#jobs-table tr[data-job-id="{job.id}"]') is not None


def test_a_jobs_address_with_a_status_the_filter_lacks_says_so_not_every_job(
        start_server: Callable[..., Any], open_page: Callable[..., Any], app: Any) -> None:
    """Tried: /jobs?status=bogus (a hand-edited or old link; /emp/api/jobs answers it 400)
    with one pending job stored. Before: the Status box cannot hold 'bogus', so the page
    asked for every status and listed the job, "1–1 of 1", under an address saying
    status=bogus. Now it asks for what the address says, shows the 400 naming it and no
    rows."""
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    page = open_page(monitor.base + "/jobs?status=bogus")
    page.wait_for_selector("#emp-error:not(.d-none)")
    assert "status 'bogus' is not one of" in page.inner_text("#emp-error")
    assert page.query_selector(f'#jobs-table tr[data-job-id="{job.id}"]') is None
    assert "status=bogus" in page.url
    page.select_option("#job-filters select[name=status]", "pending")
    page.click("#job-filters button[type=submit]")
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{job.id}"]')
    assert page.inner_text("#emp-error") == "" or page.is_hidden("#emp-error")


def test_emp_monitor_refuses_an_option_flower_does_not_have() -> None:
    # Tried: a misspelt option and a bare word; neither may start a monitor.
    for bad in ("--basic-auht=ops:x", "extra"):
        done = subprocess.run([sys.executable, "-m", "emp_tasks.cli", "monitor", bad],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 2 and f"not a Flower option: {bad!r}" in done.stderr


def test_the_job_page_shows_a_cold_start_while_the_job_prepares(
        start_server: Callable[..., Any], open_page: Callable[..., Any], client: redis.Redis,
        app: Any) -> None:
    from capability_router.functions import QueueFunctions
    from capability_router.profile import WorkerProfile

    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements={"models": ["sd15"]}, app=app)
    functions = QueueFunctions(client, "default")
    profile = WorkerProfile(worker_id="w-cold", services=["simulation"],
                            models={"simulation": ["sd15"]})
    functions.register_worker(profile)
    claimed = functions.claim(profile.signature, "w-cold", 120_000)
    report = {"model": "sd15", "tier": "remote", "bytes_done": 1_000_000,
              "bytes_total": 4_000_000, "eta_seconds": 12}
    assert functions.preparing(job.id, claimed.attempt, report) == "ok"
    page = open_page(f"{monitor.base}/jobs/{job.id}")
    page.wait_for_selector('#job-status[data-status="assigned"]', timeout=20_000)
    message = "document.getElementById('job-progress-message').textContent"
    page.wait_for_function(f"{message}.includes('downloading sd15 1.0/4.0 MB')",
                           timeout=10_000)
    assert "12 s left" in page.evaluate(message)
    # The next report reaches the open page live.
    functions.preparing(job.id, claimed.attempt, {**report, "bytes_done": 3_000_000,
                                                  "eta_seconds": 4})
    page.wait_for_function(f"{message}.includes('3.0/4.0 MB')", timeout=10_000)
    page.wait_for_selector('#job-timeline tr[data-event="job_preparing"]', timeout=10_000)
