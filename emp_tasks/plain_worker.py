"""A plain ``celery -A emp_tasks.app worker`` made the worker ``emp worker`` runs.

Three hooks, in the order Celery builds a worker:

- ``on_celeryd_init`` (Celery's ``celeryd_init`` signal, sent before the worker sets up
  its logging and its queues): the tracing service name ``emp-worker``, JSON logs when
  ``EMP_LOG_FORMAT=json``, the capability profile, the node name ``<worker id>@<host>``
  unless ``-n`` named one (``%n`` of ``--pidfile``/``--statedb`` then stands for it, as
  for a ``-n``), and the pools: ``-Q``, else ``WORKER_POOLS``/``MACHINE_POOL``.
- ``quiet_connection_loss_warning`` (``celeryd_after_setup``, once Celery's logging has
  made its deprecation warnings "always" shown).
- ``EmpWorkerStep`` (a worker bootstep, after Celery selected its queues): the transport
  options, queue settings and start residency (``prepare_worker``) for the job queues the
  worker consumes, and ``emp worker``'s warning of a pool the pools file does not name.

A worker ``run_worker`` prepared (``emp worker``) is left as it is. A worker built
without Celery's worker command (``celery.contrib.testing``) gets no ``celeryd_init``:
the step builds its profile and it serves the queues Celery chose.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from typing import Any

import click
from celery import Celery, bootsteps
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup, celeryd_init
from celery.utils.nodenames import default_nodename, host_format, node_format
from click.core import ParameterSource

from capability_router.errors import EmpError
from capability_router.profile import WorkerProfile
from capability_router.redaction import masked_url
from capability_router.transport import is_job_queue
from emp_tasks import defaults
from emp_tasks.start_checks import check_pools, pools_file_warnings
from emp_tasks.worker import build_profile, prepare_worker

logger = logging.getLogger("emp.worker")

#: Profiles ``on_celeryd_init`` built, for the step of the same worker (built once: the
#: connector it asks may wait for its service).
_profiles: weakref.WeakKeyDictionary[Any, WorkerProfile] = weakref.WeakKeyDictionary()
#: The command line's ``--pidfile``/``--statedb`` expanded for the node name
#: ``on_celeryd_init`` gave, for the step to set (Celery expanded them for its default).
_node_files: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def init_app(app: Celery) -> None:
    """Make the app's plain ``celery worker`` the worker ``emp worker`` runs."""
    app.steps["worker"].add(EmpWorkerStep)
    celeryd_init.connect(on_celeryd_init, weak=False, dispatch_uid="emp-plain-worker")
    celeryd_after_setup.connect(quiet_connection_loss_warning, weak=False,
                                dispatch_uid="emp-quiet-connection-loss")


def quiet_connection_loss_warning(**_: Any) -> None:
    """Celery prints an 8-line CPendingDeprecationWarning at every lost broker connection
    while ``worker_cancel_long_running_tasks_on_connection_loss`` is False, set or not (its
    6.0 makes True the default). EMP sets False on purpose (``app.celery_config``): a
    running job goes on under its lease. Its own line ("Connection to broker lost") stays."""
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an "
                            "optional breaking change", category=CPendingDeprecationWarning)


def _is_plain(app: Celery) -> bool:
    """An EMP app's worker that ``run_worker`` did not prepare."""
    return (EmpWorkerStep in app.steps["worker"]
            and not (app.conf.broker_transport_options or {}).get("worker_profile"))


def on_celeryd_init(sender: Any = None, instance: Any = None,
                    options: dict[str, Any] | None = None, **_: Any) -> None:
    """What ``emp worker`` sets up before Celery's worker starts, for a plain one."""
    if instance is None or not _is_plain(instance.app):
        return
    from emp_tasks.tracing import set_service_name

    options = options or {}
    set_service_name("emp-worker")
    from machine.logs import log_format

    if _start_guarded(instance.app, log_format) == "json":
        from machine.logs import use_json_logging

        use_json_logging(options.get("loglevel") or "INFO")
    profile = _start_guarded(instance.app, lambda: build_profile(instance.app))
    _profiles[instance] = profile
    if not _hostname_given():  # as `emp worker` names it: `-n <worker id>@%h`
        instance.hostname = host_format(default_nodename(f"{profile.worker_id}@%h"))
        _node_files[instance] = _node_formatted(instance.hostname)
    if not options.get("queues"):  # Celery selects -Q after this; none: emp worker's pools
        instance.app.amqp.queues.select(defaults.worker_pools())


def _hostname_given() -> bool:
    """Whether the worker command's ``-n`` was given (click says where a value came from);
    outside Celery's command line, the node name is the caller's."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or "hostname" not in ctx.params:
        return True
    return ctx.get_parameter_source("hostname") is not ParameterSource.DEFAULT


def _node_formatted(hostname: str) -> dict[str, str]:
    """The command line's ``--pidfile`` and ``--statedb`` with ``%n``/``%h``/``%d``
    expanded for ``hostname``, as Celery's worker command expands them for its ``-n``."""
    ctx = click.get_current_context(silent=True)
    params = ctx.params if ctx is not None else {}
    return {name: node_format(params[name], hostname)
            for name in ("pidfile", "statedb") if params.get(name)}


def _start_guarded(app: Celery, step: Any, who: str = "worker") -> Any:
    """Run a start ``step``; a bad setting or an absent Redis ends the start in one line,
    as ``emp worker`` says it."""
    from emp_tasks.cli import WORKER_START_ERRORS, _start_refusal

    try:
        return step()
    except (EmpError, ValueError) as exc:
        raise SystemExit(f"{who}: {exc}") from None
    except WORKER_START_ERRORS as exc:
        raise SystemExit(
            f"{who}: Redis at {masked_url(app.conf.broker_url)} "
            f"{_start_refusal(exc)} ({type(exc).__name__}: {exc})") from None


class EmpWorkerStep(bootsteps.Step):
    """Makes ``celery -A emp_tasks.app worker`` the worker ``emp worker`` runs.

    Without it a plain Celery worker claimed with ``WorkerProfile.from_env()`` alone
    (services ``simulation`` only, no connector models, no claim gate), left the pools'
    settings unset and stored no end for jobs the queue gave up on. Runs while Celery
    builds the worker, after it selected its queues, before it connects.
    """

    name = "emp.profile"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        app = parent.app
        if not _is_plain(app):
            return
        profile = _profiles.pop(parent, None) or _start_guarded(app, lambda: build_profile(app))
        pools = [name for name in app.amqp.queues.consume_from if is_job_queue(name)]
        _start_guarded(app, lambda: check_pools(pools, "-Q, WORKER_POOLS or MACHINE_POOL"),
                       f"worker {profile.worker_id}")
        for name, value in _node_files.pop(parent, {}).items():
            setattr(parent, name, value)  # read at start (pidlock) and in create (state db)
        logger.warning("worker %s: services=%s pools=%s", profile.worker_id,
                       profile.services, pools)
        from emp_tasks.producer import services

        for warning in pools_file_warnings(profile, pools, services(app)):
            logger.warning("%s", warning)
        _start_guarded(app, lambda: prepare_worker(app, profile, pools),
                       f"worker {profile.worker_id}")
