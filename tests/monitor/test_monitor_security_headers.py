"""The monitor's answers carry the security headers a browser needs, in a real Chromium.

An operator's browser holds the monitor open (often without authentication,
on a trusted network); any other web page it visits can frame the monitor's
pages. Every answer, Flower's pages included, says it may not be framed
(``frame-ancestors 'none'``, ``X-Frame-Options: DENY``), not sniffed
(``nosniff``), and runs only the monitor's own scripts (a Content Security
Policy), and every page still works under that policy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError
from test_monitor_browser import open_page  # noqa: F401 - the page fixture

from emp_tasks.producer import get_job, submit

pytestmark = pytest.mark.timeout(180)

#: The monitor's pages and Flower's, as an operator opens them.
PAGES = ["/machines", "/queue", "/jobs", "/jobs/{job}", "/submit", "/webhooks", "/pools",
         "/", "/workers", "/tasks", "/task/{job}"]


def _stuck_job(app: Any) -> Any:
    """A pending job no worker can serve: it stays pending until someone acts on it."""
    return submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                  app=app)


def test_another_site_cannot_frame_the_monitor_to_click_its_buttons(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        app: Any) -> None:
    """Tried: a page of another site on the operator's network (http://localhost:<port>,
    not the monitor's http://127.0.0.1:<port>) frames a job's page of an open monitor, and
    the operator clicks where it placed the frame's Cancel button (clickjacking: the frame
    can be made invisible under a harmless button). The click comes from the monitor's own
    origin (``Sec-Fetch-Site: same-origin``), so the cross-site guard let it through and
    the job was cancelled. Now the browser refuses to show the monitor in the frame: no
    button, and the job stays pending. (Chromium already refuses a public site's frame of
    a local address; other browsers and other local sites do not.)"""
    monitor = start_server("monitor")
    job = _stuck_job(app)
    frame_url = f"{monitor.base}/jobs/{job.id}"
    body = (f'<h1>Win a prize</h1><iframe id="f" src="{frame_url}" width="1200" '
            f'height="700"></iframe>').encode()

    class Lure(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    # Another site on the operator's network (localhost is not 127.0.0.1's site).
    lure = ThreadingHTTPServer(("127.0.0.1", 0), Lure)
    threading.Thread(target=lure.serve_forever, daemon=True).start()
    try:
        page = open_page(None, bypass_csp=False)
        page.goto(f"http://localhost:{lure.server_port}/")
        page.wait_for_function("document.getElementById('f').contentWindow !== null")
        time.sleep(3)  # the frame loads, or is refused
        framed = next(f for f in page.frames if f.parent_frame is not None)
        try:
            button = framed.wait_for_selector("#job-cancel:not([disabled])", timeout=3000)
        except PlaywrightError:  # a refused frame holds an error page: no button
            button = None
        if button is not None:
            button.click()  # what the lured operator's click does
            time.sleep(2)
    finally:
        lure.shutdown()
        lure.server_close()
    assert get_job(job.id, app=app)["status"] == "pending", (
        "a page on another site framed the monitor and its Cancel button cancelled the job")
    assert button is None, "the monitor's job page rendered inside another site's frame"


def test_every_answer_says_no_framing_no_sniffing_and_only_own_scripts(
        start_server: Callable[..., Any], app: Any) -> None:
    """Tried: the monitor's pages, JSON, live stream, static files, Flower's pages and
    API, an unknown path, a 401 of a monitor with basic auth and a 403 of an unknown host
    name. Each answer lacked a Content Security Policy and X-Frame-Options, and the
    static files (the monitor's and Flower's) and the /broker redirect lacked
    ``nosniff``."""
    job = _stuck_job(app)
    open_monitor = start_server("monitor")
    guarded = start_server("monitor", FLOWER_BASIC_AUTH="ops:s3cret")
    answers = {}
    for path in [*PAGES, "/emp/api/jobs", "/emp/api/jobs/{job}", "/emp/static/emp.js",
                 "/static/js/flower.js", "/nowhere", "/health", "/broker", "/metrics"]:
        url = open_monitor.base + path.format(job=job.id)
        answers[path] = requests.get(url, timeout=10, allow_redirects=False)
    stream = requests.get(open_monitor.base + "/emp/events", stream=True, timeout=10)
    answers["/emp/events"] = stream
    stream.close()
    answers["401 /queue"] = requests.get(guarded.base + "/queue", timeout=10)
    answers["403 unknown host"] = requests.get(
        open_monitor.base + "/queue", headers={"Host": "attacker.example"}, timeout=10)
    answers["POST cancel"] = requests.post(
        f"{open_monitor.base}/emp/api/jobs/{job.id}/cancel", timeout=10,
        headers={"Origin": "http://evil.example"})
    assert answers["401 /queue"].status_code == 401
    assert answers["403 unknown host"].status_code == 403
    missing = {}
    for what, reply in answers.items():
        policy = reply.headers.get("Content-Security-Policy", "")
        wrong = [name for name, ok in (
            ("frame-ancestors 'none'", "frame-ancestors 'none'" in policy),
            ("script-src 'self'", "script-src 'self'" in policy),
            ("object-src 'none'", "object-src 'none'" in policy),
            ("X-Frame-Options: DENY", reply.headers.get("X-Frame-Options") == "DENY"),
            ("nosniff", reply.headers.get("X-Content-Type-Options") == "nosniff"),
        ) if not ok]
        if wrong:
            missing[what] = wrong
    assert not missing, missing
    assert get_job(job.id, app=app)["status"] == "pending"


def test_every_page_works_under_its_policy(
        start_worker: Callable[..., Any], start_server: Callable[..., Any],
        open_page: Callable[..., Any], app: Any) -> None:  # noqa: F811
    """Every page, the monitor's and Flower's, loads, runs its scripts (the live stream's
    worker included) and breaks no rule of its Content Security Policy."""
    start_worker("w1")
    monitor = start_server("monitor")
    done = submit("simulation", {"steps": 2, "duration": 0.2}, app=app)
    done.get(timeout=30)
    job = _stuck_job(app)
    page = open_page(None, bypass_csp=False)
    page.add_init_script("""window.__violations = [];
        document.addEventListener('securitypolicyviolation',
          e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));""")
    complaints: list[str] = []
    page.on("console", lambda m: complaints.append(m.text)
            if "Content Security Policy" in m.text else None)
    for path in PAGES:
        page.goto(monitor.base + path.format(job=job.id))
        if path in ("/", "/workers", "/tasks") or path.startswith("/task/"):
            page.wait_for_load_state("networkidle")
        else:
            page.wait_for_selector('#emp-live[data-state="live"]', timeout=15_000)
            page.wait_for_selector("#s-service option" if path == "/submit"
                                   else "#emp-updated:not(:empty)", state="attached")
        assert page.evaluate("window.__violations") == [], path
    page.goto(monitor.base + "/tasks")
    page.wait_for_selector(f"text={done.id}", timeout=20_000)
    page.goto(monitor.base + "/workers")  # Flower's worker page, with its control forms
    page.click("a.worker-name-link", timeout=20_000)
    page.wait_for_url("**/worker/**")
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.__violations") == [], page.url
    page.goto(f"{monitor.base}/jobs/{job.id}")
    page.wait_for_selector('#emp-live[data-state="live"]')
    page.click("#job-cancel")
    page.wait_for_selector('#job-status[data-status="cancelled"]')
    # Progress bars drawn as markup keep their inline widths (style attributes apply).
    page.goto(monitor.base + "/jobs")
    bar = f'#jobs-table tr[data-job-id="{done.id}"] .progress-bar'
    page.wait_for_selector(bar)
    assert page.evaluate("""s => { const b = document.querySelector(s);
        return b.getBoundingClientRect().width / b.parentElement.getBoundingClientRect().width
        }""", bar) > 0.95
    assert complaints == []
