"""``/metrics`` follows the monitor's authentication unless opened on purpose for scrapers."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.timeout(120)


def test_metrics_need_the_monitors_credentials_unless_made_public(start_server) -> None:
    """Tried: GET /metrics anonymously and with a wrong password on a --basic_auth monitor
    (before: 200 with every queue figure); with the right credentials it answers, and with
    EMP_METRICS_PUBLIC=1 anyone may scrape while the pages stay guarded."""
    guarded = start_server("monitor", FLOWER_BASIC_AUTH="ops:s3cret")
    for who, auth in (("anonymous", None), ("wrong password", ("ops", "guess"))):
        reply = requests.get(guarded.base + "/metrics", auth=auth, timeout=10)
        assert reply.status_code == 401, (who, reply.status_code)
        assert "emp_workers" not in reply.text and "flower_" not in reply.text, who
    reply = requests.get(guarded.base + "/metrics", auth=("ops", "s3cret"), timeout=10)
    assert reply.status_code == 200 and "emp_workers" in reply.text

    public = start_server("monitor", FLOWER_BASIC_AUTH="ops:s3cret", EMP_METRICS_PUBLIC="1")
    reply = requests.get(public.base + "/metrics", timeout=10)
    assert reply.status_code == 200 and "emp_workers" in reply.text
    assert requests.get(public.base + "/queue", timeout=10).status_code == 401


def test_metrics_follow_an_oauth_login_too(start_server) -> None:
    """Tried: GET /metrics without a session on an --auth (OAuth) monitor: refused, not
    redirected to a login page a scraper cannot follow."""
    monitor = start_server("monitor", FLOWER_AUTH=".*@example.com",
                           FLOWER_COOKIE_SECRET="cookie-secret-for-the-test")
    reply = requests.get(monitor.base + "/metrics", allow_redirects=False, timeout=10)
    assert reply.status_code == 403 and "EMP_METRICS_PUBLIC" in reply.text
