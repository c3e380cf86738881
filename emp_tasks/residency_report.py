"""A worker reports its connector's model residency after each job.

The job runs in a pool process, which holds the connector (``get_connector``)
and so knows what the job loaded or pushed out. It reports the changes into
every pool its worker serves (``worker_pools`` in the transport options,
set by ``run_worker``; the job's own pool otherwise), tagged with the
worker's profile signature so a submit can wake the worker when its model
is warm. A failed report is logged and never fails the job: residency only
steers claims.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from capability_router.profile import WorkerProfile
from capability_router.residency import Placement, ResidencyReporter
from machine.connectors.base import Connector

logger = logging.getLogger("emp.worker")

_reporters: dict[tuple[int, str], ResidencyReporter] = {}
#: Jobs and the directive thread report through one reporter per process, one at a time:
#: it sends only changes since its own last report, so two would miss each other's.
_lock = threading.Lock()


def send_residency(client: Any, worker_id: str, pools: Iterable[str], signature: str,
                   residency: Mapping[str, str | Placement]) -> dict[str, str]:
    """Report ``residency`` through this process's reporter for ``worker_id``."""
    key = (os.getpid(), worker_id)
    with _lock:
        reporter = _reporters.get(key)
        if reporter is None:
            reporter = _reporters[key] = ResidencyReporter(client, worker_id, pools, signature)
        return reporter.report(residency)


def worker_identity(app: Any) -> tuple[str, str, list[str]]:
    """(worker id, profile signature, pools) of the worker this process runs for."""
    options = app.conf.broker_transport_options or {}
    profile = options.get("worker_profile") or {}
    if not profile.get("worker_id"):
        return "", "", []
    signature = WorkerProfile.from_dict(profile).signature
    return profile["worker_id"], signature, list(options.get("worker_pools") or [])


def report_residency(task: Any, connector: Connector) -> dict[str, str]:
    """Send what changed in ``connector``'s residency; returns ``{model: tier}`` sent."""
    context = task.job
    if context is None:
        return {}
    try:
        residency = connector.residency()
        worker_id, signature, pools = worker_identity(task.app)
        if not worker_id or not residency and (os.getpid(), worker_id) not in _reporters:
            return {}
        return send_residency(context.functions.client, worker_id,
                              pools or [context.namespace], signature, residency)
    except Exception:  # claims only lose a preference
        logger.warning("could not report model residency", exc_info=True)
        return {}
