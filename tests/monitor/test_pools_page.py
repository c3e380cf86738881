"""Pool observability in the monitor: the Prometheus series per pool, and the Pools page's
charts moving in a real headless Chromium while a real worker runs jobs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import NAMESPACES_KEY, Keys
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from capability_router.residency import ResidencyReporter
from conftest import ROOT, wait_for
from emp_tasks.producer import submit
from webapp.monitor.metrics import register

#: ``EMP_SCREENSHOT_DIR=docs`` refreshes the README's picture of the page (as in
#: test_monitor_browser); otherwise it lands in the test's temporary directory.
SCREENSHOT_DIR = os.environ.get("EMP_SCREENSHOT_DIR")


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def scrape(redis_url: str) -> str:
    """One scrape of the monitor's collector, as Prometheus would read it."""
    registry = CollectorRegistry()
    collector = register(redis_url, registry)
    try:
        return generate_latest(registry).decode()
    finally:
        collector.client.close()


def test_prometheus_exposes_the_per_pool_series(client: redis.Redis, redis_server: Any) -> None:
    queue = QueueFunctions(client, "gpu")
    client.sadd(NAMESPACES_KEY, "gpu")  # as the transport does for a pool it uses
    profile = WorkerProfile.from_dict({"worker_id": "g1", "services": ["simulation"],
                                       "models": {"simulation": ["sdxl"]}})
    queue.register_worker(profile)
    WorkerRegistry(client).heartbeat(profile.as_dict(), ["gpu"], [], ttl_ms=60_000, first=True)
    ResidencyReporter(client, "g1", ["gpu"], profile.signature).report({"sdxl": "gpu"})
    client.set(Keys("gpu").desired, "4")
    now = server_ms(client)
    spec = JobSpec(service="simulation", requirements={"models": ["sdxl"]})
    queue.enqueue("j1", spec, "{}", now_ms=now - 4000)
    claimed = queue.claim(profile.signature, "g1", 60_000, now_ms=now - 3000)
    assert isinstance(claimed, Claimed)
    queue.start("j1", claimed.attempt, now_ms=now - 3000)
    assert queue.complete("j1", claimed.attempt, None, now_ms=now - 1000) == "ok"

    text = scrape(redis_server.url)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}

    def at(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert at("emp_pool_model_hits", pool="gpu", kind="warm") == 1
    assert at("emp_pool_model_hits", pool="gpu", kind="download") == 0
    assert at("emp_pool_hit_rate", pool="gpu") == 1.0
    # one job over the current minute so far and the 4 before: 4 to 5 minutes
    assert 1 / 5 <= at("emp_pool_throughput_per_minute", pool="gpu") <= 1 / 4
    assert at("emp_pool_wait_p95_seconds", pool="gpu") == pytest.approx(0.95, abs=0.05)
    assert at("emp_pool_queue_efficiency", pool="gpu") == pytest.approx(0.5)
    assert 0 < at("emp_pool_utilization", pool="gpu") <= 1
    assert at("emp_pool_machines", pool="gpu", state="live") == 1
    assert at("emp_pool_machines", pool="gpu", state="desired") == 4
    assert ("emp_pool_machines", (("pool", "default"), ("state", "desired"))) not in got
    assert ("emp_pool_routing_accuracy", (("pool", "gpu"),)) not in got  # nothing routed



def test_throughput_per_minute_is_the_rate_whatever_second_of_the_minute_it_is_read(
        client: redis.Redis, redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a pool completing a job every 6 s (10 a minute) for four whole minutes,
    scraped 1 s into the fifth (Redis's clock pinned). The gauge sums the current minute
    and the four before, i.e. 4 to 5 minutes. Before, it divided by 5 whatever the
    second: 8.0 at the start of each minute rising to 10 at its end, a sawtooth
    of -20% that a "throughput dropped" alert would fire on every minute. Now it divides
    by the time the minutes cover (4 + 1/60 here): 9.96."""
    t0 = 1_800_000_000_000  # a minute's start (virtual time, as the simulator's)
    queue = QueueFunctions(client, "steady")
    client.sadd(NAMESPACES_KEY, "steady")
    profile = WorkerProfile.from_dict({"worker_id": "s1", "services": ["simulation"]})
    queue.register_worker(profile)
    for i in range(40):
        at = t0 + i * 6000
        queue.enqueue(f"s{i}", JobSpec(service="simulation"), "{}", now_ms=at)
        claimed = queue.claim(profile.signature, "s1", 60_000, now_ms=at)
        assert isinstance(claimed, Claimed)
        queue.start(claimed.job_id, claimed.attempt, now_ms=at)
        assert queue.complete(claimed.job_id, claimed.attempt, None, now_ms=at + 1000) == "ok"
    monkeypatch.setattr("webapp.monitor.metrics.redis_now_ms", lambda _: t0 + 241_000)

    text = scrape(redis_server.url)
    rate = next(s.value for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "emp_pool_throughput_per_minute" and s.labels["pool"] == "steady")
    assert rate == pytest.approx(40 / (4 + 1 / 60))


def test_utilization_says_a_worker_running_several_jobs_at_once_counts_each(
        client: redis.Redis, redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: one live worker (`emp worker -c 2`) holding two jobs for a whole minute,
    scraped (Redis's clock pinned; the same on a real `-c 3` worker: 1.5 and rising).
    emp_pool_utilization is 2.0: busy counts jobs, live counts workers. Before, its HELP
    said "Busy worker-seconds / live worker-seconds", a share an alert would read as at
    most 1. Now the HELP (and the README) say it counts running jobs and can pass 1."""
    t0 = 1_800_000_000_000
    queue = QueueFunctions(client, "multi")
    client.sadd(NAMESPACES_KEY, "multi")
    profile = WorkerProfile.from_dict({"worker_id": "m1", "services": ["simulation"]})
    queue.register_worker(profile)
    client.zadd(Keys("multi").workers, {"m1": t0 + 3_600_000})  # live all along
    for job_id in ("a", "b"):
        queue.enqueue(job_id, JobSpec(service="simulation"), "{}", now_ms=t0)
    held = [queue.claim(profile.signature, "m1", 3_600_000, now_ms=t0) for _ in range(2)]
    for claimed in held:
        assert isinstance(claimed, Claimed)
        queue.start(claimed.job_id, claimed.attempt, now_ms=t0)
    for claimed in held:
        assert queue.complete(claimed.job_id, claimed.attempt, None,
                              now_ms=t0 + 60_000) == "ok"
    monkeypatch.setattr("webapp.monitor.metrics.redis_now_ms", lambda _: t0 + 61_000)

    text = scrape(redis_server.url)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "emp_pool_utilization")
    assert next(s.value for s in family.samples if s.labels["pool"] == "multi") \
        == pytest.approx(2.0, abs=0.05)
    assert "above 1" in family.documentation


@pytest.mark.timeout(60)
def test_the_pools_page_draws_charts_that_move_while_jobs_run(
        browser: Any, start_worker: Callable[..., Any], start_server: Callable[..., Any],
        app: Any, client: redis.Redis, tmp_path: Path) -> None:
    started = time.monotonic()
    start_worker("w1")
    monitor = start_server("monitor")
    missing = requests.get(monitor.base + "/emp/api/pools/nowhere/metrics", timeout=10)
    assert missing.status_code == 404 and "no pool 'nowhere'" in missing.json()["error"]
    window = requests.get(monitor.base + "/emp/api/pools/default/metrics?window=2h", timeout=10)
    assert window.status_code == 400
    assert window.json()["error"] == "unknown window '2h': use one of 1h, 24h"
    # bypass_csp: wait_for_function compiles its predicate in the page (see open_page).
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(monitor.base + "/pools")
        page.wait_for_selector('#chart-throughput[data-points]', timeout=15_000)
        assert page.get_attribute("#pools-charts", "data-pool") == "default"
        assert page.locator("#pools-charts svg").count() == 6
        before = float(page.get_attribute("#chart-throughput", "data-total"))
        for _ in range(3):
            submit("simulation", {"steps": 1, "duration": 0.05}, app=app)

        def throughput() -> float:
            return float(page.get_attribute("#chart-throughput", "data-total"))

        wait_for(lambda: throughput() >= before + 3, timeout=20,
                 message="the throughput chart counting the three jobs without a reload")
        assert page.get_attribute("#chart-machines", "data-last") == "1"  # one live worker
        assert float(page.get_attribute("#chart-queue_depth", "data-points")) >= 1
        assert page.locator("#pools-total-completed .value").inner_text() == str(int(before) + 3)
        page.click('#pools-window button[data-window="24h"]')
        page.wait_for_function(
            "document.getElementById('pools-charts').dataset.window === '24h'", timeout=10_000)
        assert float(page.get_attribute("#chart-throughput", "data-total")) >= before + 3
        folder = ROOT / SCREENSHOT_DIR if SCREENSHOT_DIR else tmp_path
        page.click('#pools-window button[data-window="1h"]')
        page.wait_for_function(
            "document.getElementById('pools-charts').dataset.window === '1h'", timeout=10_000)
        page.screenshot(path=str(folder / "monitor-pools.png"), full_page=True)
    finally:
        context.close()
    assert not errors, errors
    assert time.monotonic() - started < 40


def test_an_unserved_pools_depth_chart_ends_at_the_pending_count_beside_it(
        browser: Any, start_worker: Callable[..., Any], start_server: Callable[..., Any],
        app: Any) -> None:
    """Tried: a worker of pool depth-p ran a job and stopped; then two jobs were filed in
    depth-p. The Pools page said "Pending now 2" and "Live / desired 0 / —" while its
    Queue depth chart ended at 0 and its Machines chart at 1 live worker: the last
    samples, from the last completion (a pool no worker serves writes none). Now each
    chart's current minute is the figure shown beside it: depth 2, live 0."""
    worker = start_worker("depth-w", wait=False, args=["-Q", "depth-p"]).wait_ready("depth-p")
    assert submit("simulation", {"steps": 1}, pool="depth-p", app=app).get(timeout=30)
    worker.stop()
    for _ in range(2):
        submit("simulation", {"steps": 1}, pool="depth-p", app=app)
    monitor = start_server("monitor")
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(monitor.base + "/pools?pool=depth-p")
        page.wait_for_selector('#pools-charts[data-pool="depth-p"] #chart-queue_depth'
                               '[data-points]', timeout=15_000)
        assert page.locator("#pools-total-pending .value").inner_text() == "2"
        assert page.locator("#pools-total-machines .value").inner_text() == "0 / —"
        assert page.get_attribute("#chart-queue_depth", "data-last") == "2"
        assert page.get_attribute("#chart-machines", "data-last") == "0"
    finally:
        context.close()
    assert not errors, errors
