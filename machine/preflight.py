"""Check at the machine's start what its workers would refuse at theirs.

A worker started by the machine with a setting it refuses (an unusable
``EMP_MODEL_CACHE_DIR``, ``EMP_LEASE_SECONDS=0``, a malformed connector number
or ``WORKER_*`` capability, a bad pool name) exits at start; supervisor starts it
again until it gives up, the machine revives it every ``EMP_REVIVE_SECONDS``, and
the reason is only in the worker's log file. These are the worker's own checks
(``emp_tasks.start_checks``, its profile, its connector's settings, built but not
connected), run here on each worker's environment: the machine then refuses to
start, in one line naming the worker and the setting.
"""

from __future__ import annotations

import os

from capability_router.errors import EmpError
from capability_router.profile import WorkerProfile
from emp_tasks import defaults
from emp_tasks.start_checks import check_pools, check_worker_settings
from machine.connectors.factory import connector_from_env
from machine.errors import MachineError
from machine.plan import WORKER, MachinePlan


def check_workers(plan: MachinePlan) -> None:
    """MachineError naming the first worker of ``plan`` and the setting it would refuse,
    read from this process's environment (which the workers inherit) and theirs."""
    workers = [spec for spec in plan.programs if spec.role == WORKER]
    if not workers:
        return
    first = workers[0].name
    try:  # settings the plan never sets per worker: the machine's environment decides
        check_worker_settings()
        check_pools(defaults.worker_pools(), defaults.worker_pools_setting())
    except ValueError as exc:
        raise MachineError(f"worker {first}: {exc}") from None
    for spec in workers:
        worker_env = {**os.environ, **spec.env}
        try:
            WorkerProfile.from_env(worker_env)
            connector = connector_from_env(worker_env)
        except (EmpError, ValueError) as exc:
            raise MachineError(f"worker {spec.name}: {exc}") from None
        if connector is not None:
            connector.close()
