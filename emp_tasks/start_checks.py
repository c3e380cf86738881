"""The settings ``emp worker`` checks before it serves, in one place.

``emp machine`` runs the same checks at its own start: a setting every worker would
refuse stops the machine in one line, instead of leaving its workers exiting at start
under supervisor over and over, the reason in their log files only.
"""

from __future__ import annotations

from capability_router.keys import check_new_pool
from emp_tasks import defaults


def check_worker_settings() -> None:
    """Read every ``EMP_*`` number a worker reads, and the model cache's settings (its
    folder made and written); ValueError naming the first bad one."""
    defaults.queue_settings(), defaults.lease_seconds(), defaults.idle_block_seconds()
    defaults.time_limits(), defaults.health_gate_seconds()
    defaults.health_gate_timeout_seconds(), defaults.health_gate_open_seconds()
    if defaults.env("EMP_MODEL_CACHE_DIR"):
        from machine.models.settings import check_settings

        check_settings()


def check_pools(pools: list[str], where: str) -> None:
    """ValueError naming the first pool name no queue can have, and ``where`` it was set.
    A worker's pool is made when it serves it: only a name a URL can carry
    (``check_new_pool``: not '.' or '..')."""
    for pool in pools:
        check_new_pool(pool, where)


def unknown_pools_warning(worker_id: str, pools: list[str]) -> str | None:
    """A warning when ``EMP_POOLS_FILE`` (set for this worker) names none of some pool it
    serves: the router files no job there, so only jobs that name that pool would ever
    reach it. Said by ``emp worker`` and the plain ``celery worker`` alike."""
    from capability_router.errors import PoolsFileError
    from capability_router.pools import pools_file_from_env

    try:
        pools_file = pools_file_from_env()
    except PoolsFileError as exc:
        return f"worker {worker_id}: warning: EMP_POOLS_FILE: {exc}"
    unknown = [p for p in pools if pools_file is not None and p not in pools_file.pools]
    if not unknown:
        return None
    return (f"worker {worker_id}: warning: pool(s) {', '.join(unknown)} not in the "
            f"pools file {pools_file.path} (it has {', '.join(pools_file.pools)}): the "
            "router files no job there, only jobs that name the pool reach this worker")
