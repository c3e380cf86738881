"""``simulation``: a stand-in GPU job with steps, duration and progress reports.

Runs through the simulation connector (``machine.connectors.simulation``), so
its failures (``failure_rate``, ``failure_type`` in the payload or the
``EMP_SIMULATION_*`` settings) are classified and retried like real ones.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from emp_tasks.connector_jobs import run_connector_job

#: Size features for the duration model: a work unit is one step of one 1024x1024
#: image (or video frame); payload ``width``, ``height`` and ``frames`` are optional.
SIZE_FEATURES = {"steps": 1, "width": 1024, "height": 1024, "frames": 1}


@shared_task(bind=True, name="emp.simulation", service="simulation", prepares_models=True,
             retry_backoff=1, retry_backoff_max=30, duration_features=SIZE_FEATURES)
def simulation(self: Any, steps: int | None = None, duration: float | None = None,
               **payload: Any) -> dict[str, Any]:
    """Run ``steps`` steps over ``duration`` seconds, reporting progress after each.

    Unset, they come from the connector's settings (10 steps, 2 s by default).
    The result keeps the job's historical ``steps``, ``seconds``, ``worker`` and
    ``payload`` at the top, beside the connector's result fields.
    """
    options = {k: v for k, v in (("steps", steps), ("duration", duration)) if v is not None}
    output = run_connector_job(self, {**payload, **options})
    return {**output.as_dict(), **output.data, "worker": self.request.hostname,
            "payload": payload}
