"""A worker stops advertising models its service could not load (a corrupt copy).

The connector raises ModelUnusableHere (machine.connectors.bad_models) naming
the models. The job runs in a pool process, but the profile the worker claims
with lives in its main process, in the transport channel. So the pool process
asks its own worker, over Celery's remote control, to drop them
(``emp_drop_models``, sent to this worker only) and waits for the answer: the
profile is re-registered without the models before the job's retry can be
claimed, and a job requiring them goes to a worker that still has them.
Importing this module registers the command (``emp_tasks.connector_jobs`` does).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery.worker.control import control_command, ok

from capability_router.profile import WorkerProfile

logger = logging.getLogger("emp.worker")

#: Name of the command a worker answers.
DROP_MODELS = "emp_drop_models"

#: Seconds the pool process waits for its worker to confirm.
REPLY_TIMEOUT_SECONDS = 5.0


def without_models(profile: WorkerProfile, bad: dict[str, list[str]]) -> WorkerProfile:
    """``profile`` with the ``{service: [model, ...]}`` in ``bad`` taken out of its models."""
    models = {service: sorted(set(names) - set(bad.get(service, [])))
              for service, names in profile.models.items()}
    return dataclasses.replace(profile, models=models)


@control_command(signature="<{service: [model, ...]}>")
def emp_drop_models(state: Any, models: dict[str, list[str]] | None = None,
                    job_id: str = "", reason: str = "", **kwargs: Any) -> dict[str, str]:
    """Re-register this worker's profile without ``models`` in every pool it serves."""
    consumer = state.consumer
    channel = consumer.task_consumer.channel
    old: WorkerProfile = channel.worker
    new = without_models(old, models or {})
    dropped = sorted(f"{service}:{name}" for service, names in old.models.items()
                     for name in set(names) - set(new.models.get(service, [])))
    channel.worker = new  # replaces the channel's cached profile: claims use the new one
    for namespace in channel.job_queues:
        channel.register(namespace)
    options = dict(consumer.app.conf.broker_transport_options or {})
    options["worker_profile"] = new.as_dict()
    consumer.app.conf.broker_transport_options = options
    logger.warning("worker %s stops advertising %s: %s (job %s)", new.worker_id,
                   ", ".join(dropped) or "nothing (not advertised)", reason or "unusable",
                   job_id or "-", extra={"event": "worker_models_dropped",
                                         "worker_id": new.worker_id, "models": dropped,
                                         "job_id": job_id or None})
    return ok(f"dropped {len(dropped)} model name(s)")


def stop_advertising(task: Any, bad_models: dict[str, list[str]], reason: str = "") -> bool:
    """Ask the worker running ``task`` to drop ``bad_models``; True once it confirmed.

    Run eagerly (no worker) it does nothing.
    """
    hostname = getattr(task.request, "hostname", None)
    if not hostname or task.request.is_eager:
        return False
    try:
        replies = task.app.control.broadcast(
            DROP_MODELS, arguments={"models": bad_models, "job_id": task.request.id or "",
                                    "reason": reason},
            destination=[hostname], reply=True, timeout=REPLY_TIMEOUT_SECONDS, limit=1)
    except Exception:  # the retry still runs; the worker may try the model once more
        logger.warning("could not ask worker %s to drop %s", hostname, bad_models,
                       exc_info=True)
        return False
    return bool(replies)
