"""The monitor's actions refuse cross-site requests, with or without authentication.

Flower checks Origin and Sec-Fetch-Site only when an auth option is set;
before this, an unauthenticated monitor accepted a ``text/plain`` POST that
any web page can send without a CORS preflight, and created a job.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import requests

from emp_tasks.producer import get_job, submit

pytestmark = pytest.mark.timeout(120)


def _records(client: redis.Redis) -> dict[str, Any]:
    return {key: client.hgetall(key) for key in client.scan_iter("emp:{*}:job:*", _type="hash")}


@pytest.mark.parametrize("auth", [None, "ops:s3cret"], ids=["no auth", "basic auth"])
def test_cross_site_actions_are_refused_and_change_nothing(
        start_server, app: Any, client: redis.Redis, auth: str | None) -> None:
    """Tried, against a monitor with and without --basic_auth: a text/plain submit (what an
    HTML form or a no-preflight fetch from any page sends), a JSON submit and a cancel
    carrying a foreign Origin, and ones carrying Sec-Fetch-Site: cross-site / same-site.
    Each is refused (415 or 403) and no job is created or changed; the same requests from
    the monitor's own origin still work."""
    env = {"FLOWER_BASIC_AUTH": auth} if auth else {}
    monitor = start_server("monitor", **env)
    credentials = tuple(auth.split(":")) if auth else None
    stuck = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                   app=app)
    before = _records(client)
    body = '{"service_required": "echo", "payload": {}}'
    forged = [
        ("/emp/api/submit", {"Content-Type": "text/plain"}, 415, "Content-Type"),
        ("/emp/api/submit", {"Content-Type": "text/plain;charset=UTF-8",
                             "Origin": "http://evil.example"}, 403, "cross-site"),
        ("/emp/api/submit", {"Content-Type": "application/json",
                             "Origin": "http://evil.example"}, 403, "cross-site"),
        ("/emp/api/submit", {"Content-Type": "application/json",
                             "Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
        ("/emp/api/submit", {"Content-Type": "application/json",
                             "Sec-Fetch-Site": "same-site"}, 403, "cross-site"),
        (f"/emp/api/jobs/{stuck.id}/cancel", {"Origin": "http://evil.example"}, 403,
         "cross-site"),
        (f"/emp/api/jobs/{stuck.id}/cancel", {"Sec-Fetch-Site": "cross-site"}, 403,
         "cross-site"),
        # An Origin that does not parse (unmatched '['): was a 500.
        ("/emp/api/submit", {"Content-Type": "application/json", "Origin": "http://[evil"},
         403, "cross-site"),
    ]
    for path, headers, status, words in forged:
        reply = requests.post(monitor.base + path, data=body, headers=headers, auth=credentials,
                              timeout=10)
        assert reply.status_code == status, (path, headers, reply.status_code, reply.text)
        assert words in reply.json()["error"], (path, headers, reply.text)
    assert _records(client) == before
    assert get_job(stuck.id, app=app)["status"] == "pending"

    # The monitor's own pages send JSON from their own origin: that still works.
    own = {"Content-Type": "application/json", "Origin": monitor.base,
           "Sec-Fetch-Site": "same-origin"}
    reply = requests.post(monitor.base + "/emp/api/submit", data=body, headers=own,
                          auth=credentials, timeout=10)
    assert reply.status_code == 201, reply.text
    reply = requests.post(f"{monitor.base}/emp/api/jobs/{stuck.id}/cancel", auth=credentials,
                          headers={"Origin": monitor.base, "Sec-Fetch-Site": "same-origin"},
                          timeout=10)
    assert reply.status_code == 200, reply.text


def test_an_open_monitor_answers_no_foreign_name_dns_rebinding(
        start_server, app: Any, client: redis.Redis) -> None:
    """Tried, against a monitor without authentication: what a DNS-rebinding page sends
    once its name points at the monitor: ``Host`` and ``Origin`` both its own name and
    ``Sec-Fetch-Site: same-origin``. The Origin check passed (Origin matched Host), so the
    submit created a job and reads answered. Now any request for a foreign name is 403
    and nothing is written; the monitor's address, ``localhost`` and names in
    ``EMP_MONITOR_ALLOWED_HOSTS`` are answered."""
    monitor = start_server("monitor", EMP_MONITOR_ALLOWED_HOSTS="ops.example")
    port = monitor.base.rsplit(":", 1)[1]
    before = _records(client)
    rebound = {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}",
               "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
    reply = requests.post(monitor.base + "/emp/api/submit", headers=rebound, timeout=10,
                          data='{"service_required": "echo", "payload": {}}')
    assert reply.status_code == 403 and "DNS rebinding" in reply.json()["error"], reply.text
    for path in ("/emp/api/queue", "/", "/api/workers", "/metrics"):
        reply = requests.get(monitor.base + path, headers={"Host": f"attacker.example:{port}"},
                             timeout=10)
        assert reply.status_code == 403, (path, reply.status_code)
    assert _records(client) == before
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"ops.example:{port}"):
        reply = requests.get(monitor.base + "/emp/api/queue", headers={"Host": host},
                             timeout=10)
        assert reply.status_code == 200, (host, reply.status_code)


def test_flowers_open_api_option_does_not_open_the_monitors_data_to_other_sites(
        start_server, app: Any) -> None:
    """Tried: a monitor without authentication and ``FLOWER_UNAUTHENTICATED_API=true``
    (Flower's switch for scripts to use its own API without a login), read from another
    site's page with the operator's browser: the monitor's job list and a job's record
    (customers' payloads and results), its live event stream and its pages all answered
    ``Access-Control-Allow-Origin: *``, so any page the operator visited could read them.
    Now only Flower's own API (what the switch is for) answers other origins."""
    monitor = start_server("monitor", FLOWER_UNAUTHENTICATED_API="true")
    job = submit("simulation", {"steps": 1, "secret": "customer data"},
                 requirements={"hardware": {"gpu_memory_gb": 99}}, app=app)
    foreign = {"Origin": "http://evil.example"}
    for path in ("/emp/api/jobs", f"/emp/api/jobs/{job.id}", "/emp/api/queue",
                 "/emp/api/machines", "/emp/api/webhooks", "/emp/events", "/jobs", "/queue"):
        reply = requests.get(monitor.base + path, headers=foreign, stream=True, timeout=10)
        assert reply.status_code == 200, (path, reply.status_code)
        assert "Access-Control-Allow-Origin" not in reply.headers, path
        reply.close()
    preflight = requests.options(monitor.base + "/emp/api/submit", timeout=10, headers={
        **foreign, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    # Flower's API keeps what its switch promises.
    reply = requests.get(monitor.base + "/api/workers", headers=foreign, timeout=10)
    assert reply.headers.get("Access-Control-Allow-Origin") == "*"
