"""The Celery app: configured for capability routing over Redis Functions.

``create_app()`` builds a fresh app (tests, embedding); ``app`` is the one
``celery -A emp_tasks.app`` and ``emp`` use. Importing this module sends
nothing to Redis, and the Redis URL is resolved when the app is first used.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.utils.imports import import_from_cwd
from kombu.utils.uuid import uuid

from capability_router import TRANSPORT
from capability_router.cluster import THREAD_CONNECTIONS, cluster_enabled
from capability_router.job_id_reservations import NEW_ID_HEADER
from capability_router.jobspec import HEADER
from capability_router.keys import DEFAULT_NAMESPACE
from capability_router.router import CapabilityRouter
from emp_tasks import (  # noqa: F401 - remote_control registers a command
    defaults,
    directives,
    discarded,
    plain_worker,
    remote_control,
    revocation,
    thread_pool,
    tracing,
)
from emp_tasks.celery_queue import skip_redundant_declare
from emp_tasks.cluster_backend import BACKEND as CLUSTER_BACKEND
from emp_tasks.job_types import job_type
from emp_tasks.task_bases import job_base

#: Job type modules every app registers.
BUILTIN_JOBS = ["emp_tasks.jobs.simulation", "emp_tasks.jobs.echo", "emp_tasks.jobs.comfyui",
                "emp_tasks.jobs.text"]


def celery_config(redis_url: str | None = None) -> dict[str, Any]:
    """The Celery settings of an EMP app."""
    url = redis_url or defaults.redis_url()
    return {
        "broker_url": url,
        "broker_transport": TRANSPORT,
        "broker_transport_options": {
            "lease_seconds": defaults.lease_seconds(),
            "polling_interval": defaults.idle_block_seconds(),
        },
        "broker_connection_retry_on_startup": True,
        # A running job goes on through a broker outage under its lease (the fence refuses
        # its outcome if the lease lapsed and it ran elsewhere meanwhile), not cancelled
        # and run again; said here, Celery 6.0, whose default is True, keeps it so
        # (``plain_worker.quiet_connection_loss_warning``).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Celery's chord script counts a part once, whoever reports it (chord_parts)
        "result_backend": f"{CLUSTER_BACKEND}+{url}" if cluster_enabled() else url,
        **_tls_result_backend(url),
        "result_expires": 24 * 3600,
        # Celery documents "no limit"; redis-py 8 turned its None into 100 connections
        "redis_max_connections": THREAD_CONNECTIONS,
        "task_default_queue": DEFAULT_NAMESPACE,
        "task_routes": (CapabilityRouter(),),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # a plain `celery worker` without -c runs as many jobs as `emp worker`, not one per
        # core; a malformed value is Celery's to warn about (producers never read it)
        "worker_concurrency": defaults.env("WORKER_CONCURRENCY") or defaults.CONCURRENCY,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        **defaults.time_limits(),
    }


def _tls_result_backend(url: str) -> dict[str, Any]:
    """For a ``rediss://`` URL without ``ssl_cert_reqs``: verify the server's certificate,
    as redis-py (the queue's, API's and webhooks' client) does for such a URL. Celery's
    result backend refuses a ``rediss://`` URL without the parameter, so the worker alone
    exited ("Unrecoverable error") while the other services ran on the same URL; a
    ``ssl_cert_reqs`` in the URL, or the user's ``redis_backend_use_ssl``, still decides."""
    if urlsplit(url).scheme != "rediss" or "ssl_cert_reqs" in parse_qs(urlsplit(url).query):
        return {}
    return {"redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


def user_config() -> dict[str, Any]:
    """Settings of the module named by ``EMP_CELERY_CONFIG`` (e.g. conf.celeryconfig).

    Imported as Celery imports a config module: the working directory first, then
    ``sys.path``; so ``emp`` run from a checkout finds ``conf/`` as ``celery`` would.
    """
    name = defaults.env("EMP_CELERY_CONFIG")
    if not name:
        return {}
    try:
        module = import_from_cwd(name)
    except ImportError as exc:
        raise defaults.CeleryConfigError(
            f"EMP_CELERY_CONFIG={name!r} cannot be imported from the working directory or "
            f"PYTHONPATH ({exc})") from None
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k.islower()}


class EmpCelery(Celery):
    """Celery, whose ``send_task`` files a job under its job type's service.

    ``Task.apply_async`` builds the job header itself; a message sent by task
    name (``app.send_task``, a canvas step the sending app did not have
    registered) gets it here, from the task of that name, or is refused. A task
    declared on a plain ``celery.Task`` base (``base=``) is a job type too
    (``emp_tasks.task_bases``).
    """

    def _task_from_fun(self, fun: Any, name: str | None = None, base: Any = None,
                       bind: bool = False, **options: Any) -> Any:
        return super()._task_from_fun(fun, name, job_base(base), bind, **options)

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,
                  **options: Any) -> Any:
        headers = dict(options.pop("headers", None) or {})
        if HEADER in headers:  # from Task.apply_async, which traced the submit
            return super().send_task(name, args, kwargs, headers=headers, **options)
        if not options.get("task_id"):  # made here: no other job can have it
            options["task_id"] = headers[NEW_ID_HEADER] = uuid()
        tracer = tracing.job_tracer()
        if tracer is None:
            return self._send_new(name, args, kwargs, headers, None, **options)
        with tracer.root(options["task_id"]) as span:
            return self._send_new(name, args, kwargs, headers, span, **options)

    def _send_new(self, name: str, args: Any, kwargs: Any, headers: dict[str, Any],
                  span: Any, **options: Any) -> Any:
        task = job_type(self, name)
        spec = task.job_spec(args, kwargs, options)
        headers[HEADER] = spec.header()
        options["queue"] = options.get("queue") or spec.pool
        skip_redundant_declare(self, options)
        if span is not None:
            span.set_attributes({tracing.SERVICE: task.service_name, tracing.POOL: spec.pool})
        return super().send_task(name, args, kwargs, headers=headers, **options)


def create_app(redis_url: str | None = None, **settings: Any) -> Celery:
    """Build an EMP Celery app; ``EMP_CELERY_CONFIG`` then ``settings`` override defaults.

    Without ``redis_url``, the URL is resolved (``emp_tasks.locate``) on first use, so a
    program that imports this module before ``emp up`` starts still finds it.
    """
    app = EmpCelery("emp", task_cls="emp_tasks.task:EmpTask", include=BUILTIN_JOBS)
    app.add_defaults(lambda: celery_config(redis_url))
    app.conf.update(**user_config(), **settings)
    revocation.init_app(app)
    discarded.init_app(app)
    directives.init_app(app)
    # a plain `celery -A ... worker` is the worker `emp worker` runs
    plain_worker.init_app(app)
    thread_pool.install()
    return app


app = create_app()
