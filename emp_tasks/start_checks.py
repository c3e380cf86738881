"""The settings ``emp worker`` checks before it serves, in one place.

``emp machine`` runs the same checks at its own start: a setting every worker would
refuse stops the machine in one line, instead of leaving its workers exiting at start
under supervisor over and over, the reason in their log files only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from capability_router.keys import check_new_pool
from emp_tasks import defaults


def check_worker_settings() -> None:
    """Read every ``EMP_*`` number a worker reads, its log shipping's settings, and the
    model cache's settings (its folder made and written); ValueError naming the first
    bad one."""
    from machine.shipping import shipping_settings

    shipping_settings()  # a bad one used to become its default, shipping on or not
    defaults.queue_settings(), defaults.lease_seconds(), defaults.idle_block_seconds()
    defaults.time_limits(), defaults.health_gate_seconds()
    defaults.health_gate_timeout_seconds(), defaults.health_gate_open_seconds()
    defaults.health_gate(), defaults.directives_on()  # on/off words: a typo is refused
    if defaults.env("EMP_MODEL_CACHE_DIR"):
        from machine.models.settings import check_settings

        check_settings()


def check_pools(pools: list[str], where: str) -> None:
    """ValueError naming the first pool name no queue can have, and ``where`` it was set.
    A worker's pool is made when it serves it: only a name a URL can carry
    (``check_new_pool``: not '.' or '..')."""
    for pool in pools:
        check_new_pool(pool, where)


def pools_file_warnings(profile: Any, pools: list[str],
                        known_services: Iterable[str] | None = None) -> list[str]:
    """Warnings for a worker of ``profile`` serving ``pools``, from ``EMP_POOLS_FILE``
    (set for this worker): a pool the file does not name (the router files no job
    there, so only jobs that name that pool would ever reach it), and what the file
    routes to a pool it serves that it cannot run (``pool_view.worker_fit_warnings``: a
    job waited there for ever). Said by ``emp worker`` and the plain ``celery worker``
    alike. With ``known_services`` (the app's job types), also the services the file
    names that are none of them (``unknown_services_warning``)."""
    from capability_router.errors import PoolsFileError
    from capability_router.pool_view import worker_fit_warnings
    from capability_router.pools import pools_file_from_env, unknown_services_warning

    prefix = f"worker {profile.worker_id}: warning: "
    try:
        pools_file = pools_file_from_env()
    except PoolsFileError as exc:
        return [f"{prefix}EMP_POOLS_FILE: {exc}"]
    if pools_file is None:
        return []
    warnings = []
    unknown = [p for p in pools if p not in pools_file.pools]
    if unknown:
        warnings.append(
            f"{prefix}pool(s) {', '.join(unknown)} not in the pools file {pools_file.path} "
            f"(it has {', '.join(pools_file.pools)}): the router files no job there, only "
            "jobs that name the pool reach this worker")
    fit = worker_fit_warnings(pools_file, pools, profile.services,
                              profile.hardware.get("gpu_memory_gb"))
    unknown_services = (None if known_services is None
                        else unknown_services_warning(pools_file, known_services))
    if unknown_services:
        fit = [*fit, unknown_services]
    return warnings + [prefix + warning for warning in fit]
