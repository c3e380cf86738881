"""``echo``: returns its payload; fails or retries on request (for tests and demos)."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task


class EchoFailure(Exception):
    """The failure an echo job was asked to raise."""


@shared_task(bind=True, name="emp.echo", service="echo", autoretry_for=(EchoFailure,),
             retry_backoff=1, retry_backoff_max=30, retry_jitter=False)
def echo(self: Any, sleep: float = 0, fail_times: int = 0, **payload: Any) -> dict[str, Any]:
    """Echo ``payload`` after ``sleep`` seconds; fail the first ``fail_times`` runs."""
    if sleep:
        deadline = time.monotonic() + float(sleep)
        while time.monotonic() < deadline:
            self.check_cancelled()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if self.request.retries < int(fail_times):
        raise EchoFailure(f"asked to fail {fail_times} time(s); run {self.request.retries + 1}")
    return {"echo": payload, "worker": self.request.hostname, "retries": self.request.retries}
