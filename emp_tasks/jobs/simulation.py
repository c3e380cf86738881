"""``simulation``: a stand-in GPU job with steps, duration and progress reports."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task


@shared_task(bind=True, name="emp.simulation", service="simulation")
def simulation(self: Any, steps: int = 10, duration: float = 2.0, **payload: Any) -> dict[str, Any]:
    """Run ``steps`` steps over ``duration`` seconds, reporting progress after each."""
    steps = max(1, int(steps))
    started = time.monotonic()
    for step in range(1, steps + 1):
        time.sleep(float(duration) / steps)
        self.progress(100.0 * step / steps, f"step {step}/{steps}", step=step, total_steps=steps)
    return {
        "steps": steps,
        "seconds": round(time.monotonic() - started, 3),
        "worker": self.request.hostname,
        "payload": payload,
    }
