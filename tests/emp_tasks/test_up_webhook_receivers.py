"""``emp up``'s webhook service and a receiver on the same box (real processes, real Redis)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests

from emp_tasks import stack
from emp_tasks.local_redis import free_port

pytestmark = pytest.mark.timeout(120)

HOOK = {"events": ["job_submitted"]}
ADDRESS_SETTINGS = ("EMP_WEBHOOK_ALLOW_PRIVATE", "EMP_WEBHOOK_ALLOWED_NETWORKS",
                    "EMP_API_TOKENS", "EMP_ADMIN_TOKENS")


def _register(base: str, url: str) -> requests.Response:
    return requests.post(f"{base}/webhooks", json={**HOOK, "url": url}, timeout=10)


def _up_webhooks(url: str, log_dir: Path) -> tuple[str, object]:
    port = free_port()
    process = stack.start_service("webhooks", port, url, log_dir)
    base = f"http://127.0.0.1:{port}"
    stack.wait_for_health(base, process)
    return base, process


def _stop(process) -> None:  # noqa: ANN001 - subprocess.Popen
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)


def test_emp_ups_webhook_service_allows_loopback_receivers_only(
        redis_server, start_server, tmp_path, monkeypatch) -> None:
    """Tried: the webhook service as ``emp up`` starts it (``stack.start_service``, no
    EMP_WEBHOOK_* address setting), a hook registered for ``http://127.0.0.1:9/hook``.
    Before: 400 "loopback ... refused" although ``emp up`` is a one-box development stack
    and the receiver is on that box. Now loopback receivers (127.0.0.0/8, ::1) are allowed
    there, other non-global ones (10.x) still refused; a user's own setting is kept, and a
    separately started ``emp webhooks`` still refuses loopback by default."""
    for name in ADDRESS_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    base, process = _up_webhooks(redis_server.url, tmp_path)
    try:
        for url in ("http://127.0.0.1:9/hook", "http://[::1]:9/hook"):
            reply = _register(base, url)
            assert reply.status_code == 201, (url, reply.text)
        reply = _register(base, "http://10.1.2.3/hook")
        assert reply.status_code == 400 and "private" in reply.text, reply.text
    finally:
        _stop(process)

    monkeypatch.setenv("EMP_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8")  # the user's own
    base, process = _up_webhooks(redis_server.url, tmp_path)
    try:
        reply = _register(base, "http://127.0.0.1:9/hook")
        assert reply.status_code == 400 and "loopback" in reply.text, reply.text
        assert _register(base, "http://10.1.2.3/hook").status_code == 201
    finally:
        _stop(process)

    monkeypatch.delenv("EMP_WEBHOOK_ALLOWED_NETWORKS")
    alone = start_server("webhooks")
    reply = _register(alone.base, "http://127.0.0.1:9/hook")
    assert reply.status_code == 400 and "loopback" in reply.text, reply.text
