"""Start a Celery worker with a capability profile (what ``emp worker`` runs)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from capability_router.keys import DEFAULT_NAMESPACE
from capability_router.profile import WorkerProfile
from emp_tasks import defaults
from emp_tasks.connection import get_functions
from emp_tasks.producer import services


def build_profile(app: Celery, **overrides: Any) -> WorkerProfile:
    """Profile from ``WORKER_*`` variables and flags; services default to every job type."""
    profile = WorkerProfile.from_env(**overrides)
    if not overrides.get("services") and not defaults.env("WORKER_SERVICES"):
        profile.services = sorted(services(app))
    return profile


def run_worker(
    app: Celery, profile: WorkerProfile, pools: list[str] | None = None,
    concurrency: int = defaults.CONCURRENCY, loglevel: str = "info",
    extra_args: list[str] | None = None,
) -> None:
    """Run a Celery worker consuming ``pools`` with ``profile``; returns when it stops."""
    pools = pools or [DEFAULT_NAMESPACE]
    options = dict(app.conf.broker_transport_options or {})
    options["worker_profile"] = profile.as_dict()
    app.conf.broker_transport_options = options
    settings = defaults.queue_settings()
    for pool in pools:
        get_functions(app.conf.broker_url, pool).configure(**settings)
    argv = [
        "worker", "-Q", ",".join(pools), "-c", str(concurrency), "-l", loglevel,
        "-n", f"{profile.worker_id}@%h", *(extra_args or []),
    ]
    app.worker_main(argv)
