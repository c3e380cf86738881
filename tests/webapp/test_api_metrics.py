"""``GET /metrics`` of the API server: a live ``emp api`` with two gunicorn workers.

Before: the API served no ``/metrics`` (404); an operator saw no request
rates, error counts, latency or open sockets of the API.
"""

from __future__ import annotations

import contextlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from rest_helpers import ADMIN, TOKEN_A, TOKENS_ENV
from simple_websocket import ConnectionClosed

from conftest import wait_for
from emp_tasks.websocket_client import WebSocketClient as Client


def scrape(base: str, token: str | None = ADMIN) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = requests.get(base + "/metrics", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def requests_of(samples: dict, route: str, status: str, method: str = "GET") -> float:
    return samples.get(("emp_api_requests_total",
                        (("method", method), ("route", route), ("status", status))), 0.0)


def workers_that_counted(tmp: Path) -> set[str]:
    """Pids of the workers whose counter file exists in the server's metrics directory."""
    return {path.name for path in tmp.glob("emp-api-metrics-*/counter_*.db")}


@pytest.fixture
def api(start_server, tmp_path: Path):  # noqa: ANN201 - ServerProcess
    """Two workers, tokens on; TMPDIR is the test's, so its metrics directory is seen."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return start_server("api", EMP_API_PROCESSES="2", TMPDIR=str(tmp), **TOKENS_ENV), tmp


@pytest.mark.timeout(120)
def test_one_scrape_counts_every_workers_requests_by_route(api) -> None:
    """Requests on fresh connections until both workers answered some; the scrape (made by
    one worker) shows all of them under the route's URL rule, with their status."""
    server, tmp = api
    before = scrape(server.base)  # the start's /health polls counted already

    def one(n: int) -> None:
        auth = {"Authorization": f"Bearer {TOKEN_A}"}
        if n % 4 == 0:
            assert requests.get(server.base + "/health", timeout=10).status_code == 200
        elif n % 4 == 1:
            reply = requests.get(f"{server.base}/api/jobs/no-such-{n}", headers=auth, timeout=10)
            assert reply.status_code == 404
        elif n % 4 == 2:
            assert requests.get(server.base + "/api/jobs", timeout=10).status_code == 401
        else:
            assert requests.get(f"{server.base}/nothing/here/{n}", timeout=10).status_code == 404

    rounds = 0
    with ThreadPoolExecutor(8) as pool:
        while len(workers_that_counted(tmp)) < 2 and rounds < 20:
            list(pool.map(one, range(rounds * 40, rounds * 40 + 40)))
            rounds += 1
    assert len(workers_that_counted(tmp)) >= 2, "the requests never reached a second worker"
    each = rounds * 10  # of every kind

    samples = scrape(server.base)
    for route, status in [("/health", "200"), ("/api/jobs/<job_id>", "404"),
                          ("/api/jobs", "401"), ("unmatched", "404")]:
        counted = requests_of(samples, route, status) - requests_of(before, route, status)
        assert counted == each, (route, status)
    # No path became a label: no series names a job id or the unknown paths.
    labels = " ".join(str(key) for key in samples)
    assert "no-such-" not in labels and "/nothing/here" not in labels
    histogram = samples[("emp_api_request_duration_seconds_count",
                         (("method", "GET"), ("route", "/health")))]
    assert histogram == requests_of(samples, "/health", "200")
    # The whole server's process figures: the master's and both workers' memory summed.
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_cpu_seconds_total", ())] > 0


@pytest.mark.timeout(120)
def test_metrics_need_an_admin_token_unless_made_public(start_server) -> None:
    """Tokens configured: no token is 401, a customer's 403, an admin's 200;
    EMP_METRICS_PUBLIC=1 opens it to a scraper without one."""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    assert requests.get(server.base + "/metrics", timeout=10).status_code == 401
    customer = {"Authorization": f"Bearer {TOKEN_A}"}
    assert requests.get(server.base + "/metrics", headers=customer, timeout=10).status_code == 403
    assert requests.get(server.base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"},
                        timeout=10).status_code == 200
    public = start_server("api", EMP_API_PROCESSES="1", EMP_METRICS_PUBLIC="1", **TOKENS_ENV)
    assert "emp_api_requests_total" in requests.get(public.base + "/metrics", timeout=10).text


def _workers(master: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                if int(stat.read().rpartition(b")")[2].split()[1]) == master:
                    out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.mark.timeout(120)
def test_open_sockets_leave_the_gauge_when_their_worker_is_killed(start_server) -> None:
    """A client socket counts 1 while open; SIGKILL of the workers (no chance to count it
    down) leaves 0 once gunicorn replaced them, as the master marks dead workers dead."""
    server = start_server("api", EMP_API_PROCESSES="2", **TOKENS_ENV)
    key = ("emp_api_open_sockets", (("kind", "client"),))
    ws = Client.connect(f"{server.ws_base}/ws/client/app-1?token={TOKEN_A}")
    try:
        ws.receive(timeout=10)  # connection_established
        assert scrape(server.base)[key] == 1
        workers = _workers(server.process.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(set(_workers(server.process.pid)) - set(workers)) == 2,
                 message="gunicorn to start two new workers")
        wait_for(lambda: scrape(server.base).get(key) == 0, timeout=20,
                 message="the dead worker's socket to leave the gauge")
    finally:
        with contextlib.suppress(ConnectionClosed):  # closed already when its worker died
            ws.close()
