"""Lease renewal for a run that blocks the worker's event loop (Celery's solo pool).

The transport renews the leases of the jobs a worker holds from the worker's
event loop. Under prefork and threads the job runs elsewhere and the loop
keeps renewing; under ``-P solo`` the job runs on the loop itself, so nothing
renewed its lease: a job longer than the lease was taken back and started
again on another worker while it still ran. Such a run keeps its own lease
alive here, from a thread, until it ends. Its failures are said as the
transport's are, and with the same state (``RENEWALS``): once when Redis is
unreachable, once when renewals are accepted again.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from capability_router.outages import UNREACHABLE
from capability_router.profile import WorkerProfile
from capability_router.transport import RENEWALS
from emp_tasks import defaults
from emp_tasks.context import JobContext

logger = logging.getLogger(__name__)


def runs_on_worker_loop() -> bool:
    """True when this task runs on the worker's main thread in its main process: the solo
    pool (prefork runs tasks in child processes, threads on pool threads)."""
    return (multiprocessing.current_process().name == "MainProcess"
            and threading.current_thread() is threading.main_thread())


@contextmanager
def lease_kept(app: Any, context: JobContext) -> Iterator[None]:
    """Renew the job's lease every third of it while the block runs, when the worker's
    loop cannot (see the module docstring); otherwise do nothing."""
    if not runs_on_worker_loop():
        yield
        return
    options = app.conf.broker_transport_options or {}
    # The worker the claim recorded: the transport's profile, as the transport resolves it.
    worker_id = ((options.get("worker_profile") or {}).get("worker_id")
                 or WorkerProfile.from_env().worker_id)
    lease = float(options.get("lease_seconds") or defaults.lease_seconds())
    every = float(options.get("lease_renew_seconds") or lease / 3)
    done = threading.Event()

    def renew() -> None:
        while not done.wait(every):
            try:
                lost = context.functions.renew(worker_id, int(lease * 1000),
                                               [(context.job_id, context.attempt)])
            except UNREACHABLE as exc:  # said once per outage; the next period tries again
                logger.debug("lease renewal of job %s failed", context.job_id, exc_info=True)
                RENEWALS.unreachable(exc)
                continue
            except redis.ResponseError as exc:  # full or read-only: said once
                RENEWALS.refused(str(exc))
                continue
            except Exception:  # the next period tries again
                logger.debug("lease renewal of job %s failed", context.job_id, exc_info=True)
                continue
            RENEWALS.accepted()
            if lost:
                logger.warning("lease of job %s was lost; its result will be refused",
                               context.job_id)
                return

    keeper = threading.Thread(target=renew, name=f"emp-lease-{context.job_id}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join(timeout=5)
