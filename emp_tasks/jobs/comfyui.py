"""``comfyui``: run a ComfyUI workflow on the worker's ComfyUI through its connector.

Payload: ``workflow`` (API format; ``prompt`` accepted too). The result is the
connector's ``{success, data {prompt_id, outputs, status, output_text [{node_id,
kind, text}], other_outputs [{node_id, kind, value}]}, error, error_type,
output_files [{filename, url, node_id, type, size, ...}], processing_time_ms}``
plus the worker's name. Out-of-memory, timeout, network and service errors
retry with backoff up to the job's ``max_retries``; a missing model or an
invalid workflow fails at once. With routing on, the job's size for the duration
model (steps, image size, frames) is read from the workflow's sampler and latent
nodes (``capability_router.workflow_size``).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from capability_router.workflow_size import COMFYUI_FEATURES, comfyui_size_fields
from emp_tasks.connector_jobs import run_connector_job


@shared_task(bind=True, name="emp.comfyui", service="comfyui", external_service=True,
             prepares_models=True, retry_backoff=2, retry_backoff_max=60,
             duration_features=COMFYUI_FEATURES,
             duration_fields=staticmethod(comfyui_size_fields))
def comfyui(self: Any, **payload: Any) -> dict[str, Any]:
    """Run the payload's workflow; progress carries node and sampler-step detail."""
    output = run_connector_job(self, payload)
    return {**output.as_dict(), "worker": self.request.hostname}
