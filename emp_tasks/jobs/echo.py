"""``echo``: returns its payload; fails or retries on request (for tests and demos)."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from machine.connectors.env_numbers import Rule

#: What ``sleep`` (seconds, a week at most) and ``fail_times`` must be.
SLEEP, FAIL_TIMES = Rule(high=604_800), Rule(whole=True)


class EchoFailure(Exception):
    """The failure an echo job was asked to raise."""


@shared_task(bind=True, name="emp.echo", service="echo", autoretry_for=(EchoFailure,),
             retry_backoff=1, retry_backoff_max=30, retry_jitter=False)
def echo(self: Any, sleep: float = 0, fail_times: int = 0, **payload: Any) -> dict[str, Any]:
    """Echo ``payload`` after ``sleep`` seconds; fail the first ``fail_times`` runs.

    ValueError (the job fails, not retried) for a ``sleep`` that is no number of seconds
    from 0 to a week or a ``fail_times`` that is no whole number from 0: before, "abc"
    failed it with ``float()``'s error naming no field, and 1e300 slept for good."""
    sleep = _number("sleep", sleep, SLEEP)
    fail_times = int(_number("fail_times", fail_times, FAIL_TIMES))
    if sleep:
        deadline = time.monotonic() + sleep
        while time.monotonic() < deadline:
            self.check_cancelled()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if self.request.retries < fail_times:
        raise EchoFailure(f"asked to fail {fail_times} time(s); run {self.request.retries + 1}")
    return {"echo": payload, "worker": self.request.hostname, "retries": self.request.retries}


def _number(field: str, value: Any, rule: Rule) -> float:
    """``value`` as the number ``rule`` takes; ValueError naming ``field``."""
    number = rule.number(value)
    if number is None:
        raise ValueError(f"{field} must be {rule.describe()}, got {value!r}")
    return number
