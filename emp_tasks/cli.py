"""The ``emp`` command line: thin click wrappers around plain functions.

``python -m emp_tasks.cli`` runs it as the ``emp`` console script does (``emp_command``):
a setting that fails when its module is imported is one line naming it, not a
traceback. That check comes before this module's imports, which read settings.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from emp_command import main as _emp

    _emp()  # imports this module again, as emp_tasks.cli, and runs its command line
    sys.exit()

import functools
import json
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from capability_router.errors import EmpError, InvalidJob, Unroutable
from capability_router.json_names import NameRepeated, unique_object
from capability_router.states import JobStatus
from emp_tasks import defaults
from emp_tasks.locate import (
    RedisLocation,
    RedisUnreachable,
    checked,
    locate_redis,
    require_redis,
)

if TYPE_CHECKING:
    from emp_tasks.stack import Stack


def _json_option(text: str | None, name: str) -> Any:
    """The option's JSON: its text, or with a leading ``@`` the file it names (``@-``:
    standard input), as curl's ``--data @file`` (JSON text never starts with ``@``)."""
    if text is None:
        return None
    where = ""
    if text.startswith("@"):
        path = text[1:]
        if not path:
            raise click.BadParameter("@ names no file (@FILE, or @- for standard input)",
                                     param_hint=name)
        where = f" in {'standard input' if path == '-' else path}"
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise click.BadParameter(f"cannot read {path}: {reason}", param_hint=name) from None
    try:
        return json.loads(text, object_pairs_hook=unique_object)
    except (json.JSONDecodeError, NameRepeated) as exc:  # a name twice: as the REST API
        raise click.BadParameter(f"not valid JSON{where}: {exc}", param_hint=name) from None


def _with_workflow(payload: Any, path: str | None) -> Any:
    """``payload`` with the ComfyUI workflow (API format) of file ``path`` as its
    ``workflow``; the payload must not name one already."""
    if path is None:
        return payload
    from machine.connectors.base import ConnectorError
    from machine.connectors.comfyui import api_workflow

    payload = {} if payload is None else payload
    if not isinstance(payload, dict):
        return payload  # the submit refuses a payload that is no object, naming it
    if "workflow" in payload or "prompt" in payload:
        raise click.UsageError("--workflow-file and a --payload with a workflow (or prompt) "
                               "name two workflows: give one")
    workflow = _json_option(f"@{path}", "--workflow-file")
    if not isinstance(workflow, dict) or not workflow:
        raise click.BadParameter(f"{path} holds no ComfyUI workflow: want a JSON object of "
                                 "its nodes (API format)", param_hint="--workflow-file")
    try:
        api_workflow({"workflow": workflow})
    except ConnectorError as exc:
        raise click.BadParameter(exc.message, param_hint="--workflow-file") from None
    return {**payload, "workflow": workflow}


def _app(url: str | None):  # noqa: ANN202 - Celery app
    from emp_tasks.app import create_app

    return create_app(url)


def _url(obj: dict[str, Any]) -> str:
    """The Redis URL (``emp_tasks.locate`` decides), for services that wait for Redis."""
    location = locate_redis(obj["redis_url"])
    if location.note:
        click.echo(f"emp: {location.note}; using {location.shown}", err=True)
    return location.url


def _reachable_url(obj: dict[str, Any]) -> str:
    """The Redis URL once its Redis answers; otherwise a one-line error naming it."""
    location = locate_redis(obj["redis_url"])
    try:
        require_redis(location)
    except RedisUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    if location.note:
        click.echo(f"emp: {location.note}; using {location.shown}", err=True)
    return location.url


def _worker_start_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.OutOfMemoryError,
            redis.ReadOnlyError)


#: What stops a worker's start in one line: Redis absent, or refusing its setup writes.
WORKER_START_ERRORS = _worker_start_errors()


def _warn_unknown_pools(profile: Any, pools: list[str], app: Any = None) -> None:
    """Say ``pools_file_warnings`` on stderr, if any (with ``app``, of its job types too)."""
    from emp_tasks.producer import services
    from emp_tasks.start_checks import pools_file_warnings

    known = None if app is None else services(app)
    for warning in pools_file_warnings(profile, pools, known):
        click.echo(warning, err=True)


def _warn_unserved_pool(app: Any, pool: str, named: bool = True,
                        models: tuple[str, list[str]] = ("", [])) -> None:
    """Say on stderr what ``POST /api/jobs`` says in ``warnings`` of a job filed in
    ``pool`` (``pool_view.unserved_warnings``: a typo in ``--pool`` files the job in a new
    pool, where it waits until a worker serves it; a model no catalog entry nor live
    worker has). Raises redis errors: the job is filed by then, and ``submit`` says so in
    one line instead of a traceback."""
    from capability_router.pool_view import unserved_warnings
    from emp_tasks.connection import get_client
    from emp_tasks.placement import pools_file_in_force

    pools_file, _ = pools_file_in_force(app)  # the one the submit was routed with
    for warning in unserved_warnings(get_client(app.conf.broker_url), pool, named,
                                     pools_file, models):
        click.echo(f"warning: {warning}", err=True)


def _note_unserved_pool(app: Any, pool: str) -> None:
    """A note on stderr when no live worker serves ``pool`` as ``emp submit`` starts to
    wait: it showed a bar at 0% for up to --timeout without a word (a first hour without
    `emp up`). A pools file's scaler may still start machines for it: a note, not an
    error."""
    from capability_router.pool_view import unserved_pools
    from emp_tasks.connection import get_client

    if unserved_pools(get_client(app.conf.broker_url), [pool]):
        click.echo(f"note: no live worker serves pool {pool} yet; the job waits for one "
                   "(`emp up` or `emp worker` starts workers; Ctrl-C stops waiting, the "
                   "job stays filed)", err=True)


def _pending_reason(app: Any, pool: str, job_id: str) -> Callable[[], str | None]:
    """``follow_job``'s ``on_pending`` for ``emp submit``: once the job has waited a while,
    a note when the pool has live workers but none can serve it (a requirement no worker
    has, often a typo: ``{"hardware": {"gpu_mem": 16}}`` is a custom capability nobody
    offers), with what each live worker has, as the monitor's job page says it. Before,
    the bar sat at "pending 0%" until --timeout without a word. A pool with no live worker
    at all was noted already (``_note_unserved_pool``), or its scaler starts machines."""
    def reason() -> str | None:
        import redis

        from capability_router.keys import Keys
        from emp_tasks.connection import get_client
        from webapp.monitor.queue import class_servability  # the monitor's own words

        client = get_client(app.conf.broker_url)  # decodes: str replies
        try:
            job_class, status = client.hmget(Keys(pool).job(job_id), "class", "status")
            if not job_class or status != JobStatus.PENDING:
                return None
            check = class_servability(client, pool, job_class)
        except redis.RedisError:
            return None  # the wait itself says so if Redis stays away
        if check["servable"] or "no worker is registered" in check["reason"]:
            return None
        return f"note: {check['reason']}"
    return reason


def _start_refusal(exc: BaseException) -> str:
    """Why Redis stopped a worker's start (or refused a command's write), in words."""
    import redis

    if isinstance(exc, redis.OutOfMemoryError):
        return "is out of memory (maxmemory reached, policy noeviction)"
    if isinstance(exc, redis.ReadOnlyError):
        return "is read-only (a replica)"
    if isinstance(exc, redis.AuthenticationError):
        return "refused the login (the URL's password or user)"
    return "does not answer"


def _redis_in_one_line(command: Callable[..., Any]) -> Callable[..., Any]:
    """For a command that writes after its Redis answered the start check: a write Redis
    refuses (full, read-only), or a Redis lost meanwhile, is one line. ``emp submit`` on a
    Redis at maxmemory printed kombu's OperationalError with two tracebacks. Any other
    error keeps its traceback: a fault to report, not a state of Redis."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        import redis
        from kombu.exceptions import OperationalError

        from capability_router.outages import causes, refused_write

        try:
            return command(*args, **kwargs)
        except (redis.RedisError, OperationalError) as exc:
            refusal = refused_write(exc)
            if refusal is not None:
                raise click.ClickException(
                    f"Redis {_start_refusal(refusal)}: it refused the write; try again once "
                    f"it takes writes ({type(refusal).__name__}: {refusal})") from None
            lost = next((c for c in causes(exc)
                         if isinstance(c, (redis.ConnectionError, redis.TimeoutError))), None)
            if lost is not None:
                raise click.ClickException(f"Redis stopped answering ({type(lost).__name__}: "
                                           f"{lost})") from None
            raise
    return run


class EmpGroup(click.Group):
    """The ``emp`` group: a broken ``EMP_CELERY_CONFIG``, a setting a command's modules
    read as they are imported (``EMP_GREEN_REDIS_CONNECTIONS=abc`` for ``emp api``,
    ``EMP_METRICS_MAX_FAMILIES=0`` for ``emp monitor``), or a Redis URL that does not
    parse, is one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (defaults.CeleryConfigError, defaults.SettingError, RedisUnreachable) as exc:
            raise click.ClickException(str(exc)) from None


def _print_version(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    """``emp --version``: this package's version and those a bug report needs beside it."""
    if not value or ctx.resilient_parsing:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    click.echo(f"emp {of('emp-job-queue')} (celery {of('celery')}, kombu {of('kombu')}, "
               f"redis-py {of('redis')}, Python {platform.python_version()})")
    ctx.exit()


@click.group(cls=EmpGroup)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version,
              help="Show the version (with Celery's, kombu's and redis-py's) and exit.")
@click.option("--redis-url", default=None,
              help="Redis URL. Without it: env EMP_REDIS_URL, else REDIS_URL, else the "
                   f"running `emp up`, else {defaults.REDIS_URL}.")
@click.pass_context
def main(ctx: click.Context, redis_url: str | None) -> None:
    """EMP Job Queue: capability-matched GPU jobs on Celery and Redis Functions."""
    from capability_router.cluster import cluster_enabled

    cluster_enabled()  # a bad EMP_REDIS_CLUSTER: one line now, not where a client is made
    ctx.obj = {"redis_url": redis_url}


def _at_least(low: float) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback refusing a value below ``low``, naming the option, or its
    variable when the value came from the environment (click names only the option)."""
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and not value >= low:
            hint = None
            if (ctx.get_parameter_source(param.name or "")
                    == ParameterSource.ENVIRONMENT):
                hint = str(getattr(param, "envvar", None) or param.name)
            raise click.BadParameter(f"must be at least {low:g}, got {value!r}", ctx, param,
                                     param_hint=hint)
        return value
    return check


def _above(low: float) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback refusing a value that is not a finite number above ``low``: click's
    float takes ``nan`` and ``inf`` (``emp submit --timeout 0``, ``-1`` or ``nan`` filed the
    job, then said ``timeout`` at once; ``emp simulate --scale nan`` ran on)."""
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and not (math.isfinite(value) and value > low):
            raise click.BadParameter(f"must be a finite number above {low:g}, got {value!r}",
                                     ctx, param)
        return value
    return check


def _port(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """A click callback refusing a port outside 0-65535 (0: any free one), naming its
    variable when it came from the environment: gunicorn answered 70000 with a traceback,
    and Flower listened on 70000 - 65536 = 4464 without a word."""
    if value is not None and not 0 <= value <= 65535:
        hint = None
        if ctx.get_parameter_source(param.name or "") == ParameterSource.ENVIRONMENT:
            hint = str(getattr(param, "envvar", None) or param.name)
        raise click.BadParameter(f"must be a port, 0-65535, got {value}", ctx, param,
                                 param_hint=hint)
    return value


@main.command()
@click.option("--services", help="Comma list of services (env WORKER_SERVICES).")
@click.option("-Q", "--pool", "pools", multiple=True,
              help="Pool namespace(s) to serve, repeated or a comma list (env "
                   "WORKER_POOLS, else MACHINE_POOL).")
@click.option("-c", "--concurrency", type=int, envvar="WORKER_CONCURRENCY",
              callback=_at_least(1),
              default=defaults.CONCURRENCY, show_default=True,
              help="Jobs run at once (env WORKER_CONCURRENCY).")
@click.option("-P", "--worker-pool", type=click.Choice(["prefork", "threads", "solo"]),
              help="Celery's execution pool (Celery's -P; default: its worker_pool "
                   "setting, else prefork). threads suits jobs that wait on a server.")
@click.option("--worker-id", help="Worker id (env WORKER_ID).")
@click.option("--gpu-memory-gb", type=float, callback=_at_least(0), help="env WORKER_GPU_MEMORY_GB")
@click.option("--ram-gb", type=float, callback=_at_least(0), help="env WORKER_RAM_GB")
@click.option("--cpu-cores", type=int, callback=_at_least(0), help="env WORKER_CPU_CORES")
@click.option("--models", help="Models: 'svc:model,...' or JSON (env WORKER_MODELS).")
@click.option("--customer-isolation", type=click.Choice(["strict", "loose", "none"]),
              help="env WORKER_CUSTOMER_ISOLATION")
@click.option("--allowed-customers", help="Comma list (env ALLOWED_CUSTOMERS).")
@click.option("--denied-customers", help="Comma list (env DENIED_CUSTOMERS).")
@click.option("--workflow-id", help="Only take this workflow's jobs (env WORKER_WORKFLOW_ID).")
@click.option("--profile-json", help="JSON profile with custom fields (env WORKER_PROFILE_JSON).")
@click.option("-l", "--loglevel", default="info", show_default=True)
@click.pass_obj
def worker(obj: dict[str, Any], services: str | None, pools: tuple[str, ...],
           concurrency: int, worker_pool: str | None, loglevel: str, **flags: Any) -> None:
    """Run a Celery worker that claims the jobs its capabilities match."""
    import os

    from emp_tasks.start_checks import check_pools, check_worker_settings
    from emp_tasks.tracing import set_service_name
    from emp_tasks.worker import build_profile, run_worker

    set_service_name("emp-worker")

    env_names = {
        "worker_id": "WORKER_ID", "gpu_memory_gb": "WORKER_GPU_MEMORY_GB",
        "ram_gb": "WORKER_RAM_GB", "cpu_cores": "WORKER_CPU_CORES", "models": "WORKER_MODELS",
        "customer_isolation": "WORKER_CUSTOMER_ISOLATION",
        "allowed_customers": "ALLOWED_CUSTOMERS", "denied_customers": "DENIED_CUSTOMERS",
        "workflow_id": "WORKER_WORKFLOW_ID", "profile_json": "WORKER_PROFILE_JSON",
    }
    for name, value in flags.items():
        if value is not None:
            os.environ[env_names[name]] = str(value)
    if services:
        os.environ["WORKER_SERVICES"] = services
    from machine.logs import log_format

    try:  # a malformed EMP_* number the worker reads stops the start with one line naming it
        check_worker_settings()  # before logging is set up: that reads the shipping settings
        json_logs = log_format() == "json"  # set by `emp machine` for its workers
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if json_logs:
        from machine.logs import use_json_logging

        use_json_logging(loglevel)
    app = _app(_url(obj))
    try:
        profile = build_profile(app)
    except EmpError as exc:
        raise click.UsageError(str(exc)) from None
    # A comma list, as Celery's -Q and WORKER_POOLS take (no pool name holds a comma).
    pool_list = [p.strip() for q in pools for p in q.split(",") if p.strip()]
    if pools and not pool_list:
        raise click.UsageError("-Q names no pool")
    pool_list = pool_list or defaults.worker_pools()
    try:
        check_pools(pool_list, "-Q" if pools else defaults.worker_pools_setting())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"worker {profile.worker_id}: services={profile.services} pools={pool_list}",
               err=True)
    _warn_unknown_pools(profile, pool_list, app)
    try:
        status = run_worker(app, profile, pool_list, concurrency=concurrency,
                            loglevel=loglevel,
                            extra_args=["-P", worker_pool] if worker_pool else None)
    except WORKER_START_ERRORS as exc:  # before Celery runs: its setup writes to Redis
        raise click.ClickException(
            f"worker {profile.worker_id}: Redis at {locate_redis(obj['redis_url']).shown} "
            f"{_start_refusal(exc)} ({type(exc).__name__}: {exc})") from None
    except EmpError as exc:  # a connector setting the claim gate's connector cannot use
        raise click.ClickException(str(exc)) from None
    if status:
        sys.exit(status)


@main.command()
@click.argument("service")
@click.option("--payload", help="Job payload: a JSON object, or @FILE to read it from FILE "
                                "(@- from standard input).")
@click.option("--requirements", help="Requirements: a JSON object, or @FILE.")
@click.option("--workflow-file", help="A ComfyUI workflow in API format ('Save (API "
                                      "Format)'): the payload's workflow.")
@click.option("--priority", type=int, default=50, show_default=True)
@click.option("--customer-id")
@click.option("--pool")
@click.option("--workflow-id")
@click.option("--no-wait", is_flag=True, help="Print the job id and return.")
@click.option("--timeout", type=float, default=600.0, show_default=True, callback=_above(0),
              help="Seconds to wait for the job's end.")
@click.pass_obj
@_redis_in_one_line
def submit(obj: dict[str, Any], service: str, payload: str | None, requirements: str | None,
           workflow_file: str | None, priority: int, customer_id: str | None,
           pool: str | None, workflow_id: str | None, no_wait: bool, timeout: float) -> None:
    """Submit a job; waits with a progress bar unless --no-wait."""
    import redis

    from capability_router.keys import check_new_pool
    from capability_router.pool_view import required_models
    from capability_router.requirements import normalize_requirements
    from emp_tasks.producer import get_job
    from emp_tasks.producer import submit as submit_job
    from emp_tasks.watch import follow_job

    fields = {k: v for k, v in (("pool", pool), ("workflow_id", workflow_id)) if v}
    if pool:
        try:  # the submit may make the pool: only a name a URL can carry
            check_new_pool(pool, "--pool")
        except ValueError as exc:
            raise click.BadParameter(str(exc).removeprefix("--pool: "),
                                     param_hint="--pool") from None
    job_payload = _with_workflow(_json_option(payload, "--payload"), workflow_file)
    job_requirements = _json_option(requirements, "--requirements")
    url = _reachable_url(obj)
    app = _app(url)
    try:
        result = submit_job(service, job_payload, job_requirements, priority=priority,
                            customer_id=customer_id, app=app, **fields)
    except InvalidJob as exc:  # the command line's service, payload or options
        if isinstance(exc, Unroutable):  # the pools file's pools, not the command line
            raise click.ClickException(str(exc)) from None
        raise click.UsageError(str(exc)) from None
    except EmpError as exc:  # not the command line's: the pools file, say
        raise click.ClickException(str(exc)) from None
    click.echo(result.id)
    # A pool the job names: requirements.pool, as JobSpec reads it, else --pool.
    named_pool = (job_requirements or {}).get("pool") or pool
    models = required_models(normalize_requirements(job_requirements, service, customer_id))
    job_pool = named_pool
    try:  # the job is filed: a Redis lost from here on is one line, not a traceback
        if models[1] and not job_pool:  # the router's pool (or default): where it waits
            job_pool = get_job(result.id, app=app)["pool"]
        if job_pool:
            _warn_unserved_pool(app, job_pool, bool(named_pool), models)
        if no_wait:
            return
        # The router's pool when the job named none; its events are in that pool's streams.
        job_pool = job_pool or get_job(result.id, app=app)["pool"]
        if not named_pool:  # a named one was warned of above
            _note_unserved_pool(app, job_pool)
        status, data = follow_job(url, job_pool, result.id, timeout=timeout,
                                  on_pending=_pending_reason(app, job_pool, result.id))
    except KeyboardInterrupt:  # was click's bare "Aborted!", the job's fate unsaid
        click.echo(f"\nstopped waiting; job {result.id} stays filed (emp job {result.id} "
                   f"shows it, emp cancel {result.id} cancels it)", err=True)
        sys.exit(130)
    except redis.RedisError as exc:
        lost = f"Redis stopped answering ({type(exc).__name__}: {exc})"
        if no_wait:  # only the pool's warning is lost
            click.echo(f"note: job {result.id} is filed; {lost}, so whether a live worker "
                       f"serves pool {job_pool or 'of the job'} is not known", err=True)
            return
        raise click.ClickException(f"job {result.id} is filed, but {lost}; follow it "
                                   f"with: emp job {result.id}") from None
    click.echo(json.dumps({"job_id": result.id, "status": status, **data}, default=str))
    sys.exit(0 if status == JobStatus.COMPLETED else 1)


@main.command()
@click.argument("job_id")
@click.option("--events", is_flag=True, help="Also print the job's events.")
@click.pass_obj
def job(obj: dict[str, Any], job_id: str, events: bool) -> None:
    """Print a job record as JSON."""
    from emp_tasks.producer import get_job, job_events

    app = _app(_reachable_url(obj))
    try:
        record: dict[str, Any] = get_job(job_id, app=app)
    except EmpError as exc:
        raise click.ClickException(str(exc)) from None
    if events:
        record["events"] = job_events(job_id, app=app)
    click.echo(json.dumps(record, indent=2, default=str))


@main.command()
@click.argument("job_id")
@click.option("--terminate", is_flag=True, help="Kill the process running it.")
@click.pass_obj
@_redis_in_one_line
def cancel(obj: dict[str, Any], job_id: str, terminate: bool) -> None:
    """Cancel a job (pending: never runs; running: told to stop); fails if it already ended."""
    from emp_tasks.producer import cancel as cancel_job
    from emp_tasks.producer import get_job

    app = _app(_reachable_url(obj))
    try:
        record = get_job(job_id, app=app)
        status = record["status"]
        if not JobStatus(status).is_terminal:
            status = cancel_job(job_id, pool=record.get("pool"), app=app, terminate=terminate)
            if status == JobStatus.CANCELLED:
                click.echo(status)
                return
    except EmpError as exc:
        raise click.ClickException(str(exc)) from None
    raise click.ClickException(f"job {job_id!r} is already {status}")


@main.command()
@click.pass_obj
@_redis_in_one_line
def demo(obj: dict[str, Any]) -> None:
    """Submit a handful of jobs with different requirements and show them finish."""
    from emp_tasks.demo import run_demo

    sys.exit(0 if run_demo(_reachable_url(obj)) else 1)


def _check_web_settings(webhooks: bool = False) -> None:
    """A malformed ``EMP_*`` web setting stops the start with one line naming it, not a
    traceback (and, for the API, idempotency keys kept longer than job records)."""
    from webapp.settings import WebSettings
    from webapp.webhooks.config import WebhookConfig

    try:
        settings = WebSettings.from_env()
        if not webhooks:
            settings.check_idempotency_window()
        if webhooks:
            WebhookConfig.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _host_setting(param: str, envvar: str) -> str:
    """How a service's host was given, for an error about it: the variable, or --host."""
    source = click.get_current_context().get_parameter_source(param)
    return f"{envvar} (or --host)" if source is ParameterSource.ENVIRONMENT else "--host"


def _check_host(host: str, envvar: str) -> None:
    """A host this machine cannot listen on stops the start in one line naming it."""
    from webapp.listen import check_host

    check_host(host, _host_setting("host", envvar))


@main.command()
@click.option("--host", envvar="EMP_API_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="EMP_API_PORT", type=int, default=3331, show_default=True,
              callback=_port)
@click.pass_obj
def api(obj: dict[str, Any], host: str, port: int) -> None:
    """Run the API server (REST, OpenAPI, WebSockets) under gunicorn."""
    from capability_router.errors import PoolsFileError
    from capability_router.pools import pools_file_from_env
    from emp_tasks.tracing import set_service_name
    from webapp.api import run

    set_service_name("emp-api")

    try:  # a broken pools file stops the start, not every submit later
        pools_file = pools_file_from_env()
    except PoolsFileError as exc:
        raise click.ClickException(f"EMP_POOLS_FILE: {exc}") from None
    _check_web_settings()
    _check_host(host, "EMP_API_HOST")
    url = _url(obj)
    if pools_file is not None:  # said here, once: not by each process at its first routing
        from emp_tasks.placement import unknown_services_at_start

        warning = unknown_services_at_start(url, pools_file)
        if warning:
            click.echo(f"emp api: warning: routing: {warning}", err=True)
    run(url, host, port)


@main.command()
@click.option("--host", envvar="EMP_WEBHOOK_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="EMP_WEBHOOK_PORT", type=int, default=3332, show_default=True,
              callback=_port)
@click.pass_obj
def webhooks(obj: dict[str, Any], host: str, port: int) -> None:
    """Run the webhook service: registrations API and durable signed delivery."""
    from emp_tasks.tracing import set_service_name
    from webapp.webhooks import run

    set_service_name("emp-webhooks")
    _check_web_settings(webhooks=True)
    _check_host(host, "EMP_WEBHOOK_HOST")
    run(_url(obj), host, port)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", "address", envvar="EMP_MONITOR_HOST",
              help="Address to listen on (env EMP_MONITOR_HOST; else Flower's --address/"
                   "FLOWER_ADDRESS; else 127.0.0.1).")
@click.option("--port", envvar="EMP_MONITOR_PORT", type=int, callback=_port,
              help="Port (env EMP_MONITOR_PORT; else Flower's --port/FLOWER_PORT; else 3333).")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def monitor(obj: dict[str, Any], address: str | None, port: int | None,
            flower_args: tuple[str, ...]) -> None:
    """Run the monitor: Flower with the machines, queue, jobs, submit and webhooks views.

    Any Flower option may follow, e.g. --basic_auth=user:password, --auth=REGEX with
    --auth_provider, --read_only, --url_prefix=PATH, --conf=conf/flowerconfig.py.
    """
    from webapp.monitor import MonitorOptionError, run

    try:
        run(flower_args, redis_url=_url(obj), port=port, address=address,
            address_setting=_host_setting("address", "EMP_MONITOR_HOST"))
    except MonitorOptionError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--interval", type=float, default=None,
              help="Seconds between ticks (env EMP_INTELLIGENCE_INTERVAL_SECONDS; 5).")
@click.option("--lease", type=float, default=None,
              help="Seconds the leader lease lasts (env EMP_INTELLIGENCE_LEASE_SECONDS; 15).")
@click.option("--instance", default=None,
              help="Instance name (env EMP_INTELLIGENCE_INSTANCE; <hostname>-<pid>).")
@click.pass_obj
def intelligence(obj: dict[str, Any], interval: float | None, lease: float | None,
                 instance: str | None) -> None:
    """Run the model intelligence service: forecasts, placement directives, desired machines.

    Any number may run; one leads (a Redis lease), the others stand by.
    """
    from capability_router.errors import EmpError
    from emp_tasks.intelligence import run_intelligence

    try:
        run_intelligence(_reachable_url(obj), interval_seconds=interval, lease_seconds=lease,
                         instance=instance)
    except EmpError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--machine-id", help="Machine id (env MACHINE_ID; default: the hostname).")
@click.option("--workers", "plan", help="Worker plan, e.g. 'comfyui:auto,simulation:2' "
              "(env WORKERS; default simulation:auto).")
@click.option("--mock-gpus", type=int, help="Pretend to have N GPUs (env EMP_MOCK_GPUS).")
@click.option("--health-host", help="Health server address (env EMP_HEALTH_HOST; 0.0.0.0).")
@click.option("--health-port", type=int, help="Health server port (env EMP_HEALTH_PORT; 9090).")
@click.option("--run-dir", type=click.Path(path_type=Path),
              help="supervisord config, socket and logs (env EMP_MACHINE_RUN_DIR; "
                   "default .emp/machine-<id>).")
@click.pass_obj
def machine(obj: dict[str, Any], machine_id: str | None, plan: str | None,
            mock_gpus: int | None, health_host: str | None, health_port: int | None,
            run_dir: Path | None) -> None:
    """Run a machine: one worker per GPU under supervisor, a health server, status reports."""
    import os

    from machine.runtime import run_machine
    from machine.settings import MachineSettings

    if mock_gpus is not None:
        os.environ["EMP_MOCK_GPUS"] = str(mock_gpus)
    try:
        settings = MachineSettings.from_env(
            machine_id=machine_id, workers=plan, redis_url=_url(obj), health_host=health_host,
            health_port=health_port, run_dir=run_dir)
        sys.exit(run_machine(settings, announce=click.echo))
    except EmpError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--workers", type=int, default=2, show_default=True, callback=_at_least(0))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the local Redis keeps its append-only file, and the logs "
                   "(default: $XDG_STATE_HOME/emp/up, i.e. ~/.local/state/emp/up).")
@click.option("--api-port", type=int, default=3331, show_default=True, callback=_port)
@click.option("--webhook-port", type=int, default=3332, show_default=True, callback=_port)
@click.option("--monitor-port", type=int, default=3333, show_default=True, callback=_port)
@click.option("--no-web", is_flag=True, help="Skip the API, the webhook service and the monitor.")
@click.option("--demo", "with_demo", is_flag=True, help="Run the demo, then shut down.")
@click.option("--machine", "machine_gpus", type=int, default=0, is_flag=False, flag_value=2,
              help="Also run a local machine (emp machine) with N mock GPUs and a "
                   "simulation worker on each (N defaults to 2).")
@click.option("--health-port", type=int, default=9090, show_default=True, callback=_port,
              help="The local machine's health server port.")
@click.pass_obj
def up(obj: dict[str, Any], workers: int, data_dir: Path | None, api_port: int,
       webhook_port: int, monitor_port: int, no_web: bool, with_demo: bool, machine_gpus: int,
       health_port: int) -> None:
    """Bring the system up locally: Redis (unless --redis-url or EMP_REDIS_URL), simulation
    workers, the API server, the webhook service and the monitor (and, with
    --machine, a machine). Records its Redis URL where other `emp` commands and
    emp_tasks find it."""
    import os

    from emp_tasks import stack_state
    from emp_tasks.demo import run_api_demo, run_demo, run_monitor_demo
    from emp_tasks.stack import local_stack

    # A stop by SIGTERM or SIGHUP (a closed terminal) stops the stack, as Ctrl-C does: at
    # their default, emp up died at once and left its Redis and workers running.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, lambda *_: sys.exit(0))
    data_dir = (data_dir or stack_state.default_data_dir()).resolve()
    other = stack_state.running()
    if other is not None and other.data_dir == str(data_dir):
        raise click.ClickException(
            f"emp up is already running with {data_dir} (pid {other.pid}, redis "
            f"{other.redis_url}); stop it, or give this one another --data-dir")
    ports = {} if no_web else {"api": api_port, "webhooks": webhook_port,
                               "monitor": monitor_port}
    if machine_gpus:
        ports["machine"] = health_port
    given, source = ((obj["redis_url"], "--redis-url") if obj["redis_url"]
                     else (defaults.env("EMP_REDIS_URL"), "EMP_REDIS_URL"))
    if given:  # one that does not parse: each service refused it, up said "see its log"
        checked(RedisLocation(given, source))
    try:
        with local_stack(data_dir, workers, ports, machine_gpus, redis_url=given) as stack:
            state = stack_state.StackState(os.getpid(), stack.redis_url, stack.services,
                                           str(data_dir))
            with stack_state.recorded(state) as is_recorded:
                _banner(stack, workers, data_dir, is_recorded)
                if with_demo:
                    ok = run_demo(stack.redis_url)
                    if "api" in stack.services:
                        ok = run_api_demo(stack.services["api"]) and ok
                    if "monitor" in stack.services:
                        ok = run_monitor_demo(stack.services["monitor"]) and ok
                    click.echo("demo: all jobs completed" if ok
                               else "demo: some jobs did not complete")
                    click.echo(_next_steps(stack, running=False))
                    sys.exit(0 if ok else 1)
                click.echo(_next_steps(stack, running=True))
                click.echo("Ctrl-C to stop")
                signal.pause()
    except (EmpError, TimeoutError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


def _next_steps(stack: Stack, running: bool) -> str:
    """What a new user does next, with this stack's own addresses."""
    steps = ["Next: " + ("in another shell, " if running else
                         "`emp up` keeps the stack running (Ctrl-C stops it); then, in another "
                         "shell, ") + "`emp submit simulation --payload '{\"steps\": 5}'`"]
    if "monitor" in stack.services:
        steps.append(f"watch it at {stack.services['monitor']}/jobs")
    if "api" in stack.services:
        steps.append(f"submit over REST at {stack.services['api']}/api/jobs")
    return ", ".join(steps) + "; the README's \"Using it\" shows the Python API."


@main.command()
@click.option("--day", is_flag=True, help="The built-in synthetic day (the default without "
              "--trace or --quick).")
@click.option("--quick", is_flag=True, help="A one-hour slice of the day (13:00-14:00).")
@click.option("--trace", type=click.Path(exists=True, dir_okay=False),
              help="A JSONL trace instead of the synthetic day (README, \"Simulator\").")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True, max=1e6), default=1.0,
              show_default=True, callback=_above(0),
              help="Volume and fleet multiplier (10: 100 -> 500 -> 100 machines).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--policies", default=",".join(
    ["uniform", "pools", "pools+warm", "pools+warm+predictive"]), show_default=True,
    help="Comma list of policies to compare.")
@click.option("--out", type=click.Path(file_okay=False), default="sim-out", show_default=True,
              help="Directory for summary.json, table.md and the charts.")
@click.option("--pools-file", type=click.Path(exists=True, dir_okay=False),
              help="Pools file (default: conf/pools.toml).")
@click.option("--redis-url", "sim_redis_url", default=None,
              help="A Redis to use (its database is EMPTIED); default: start a private one.")
def simulate(day: bool, quick: bool, trace: str | None, scale: float, seed: int,
             policies: str, out: str, pools_file: str | None,
             sim_redis_url: str | None) -> None:
    """Compare routing policies on a trace with the real Redis Functions in virtual time."""
    from capability_router.simulator.policies import POLICIES
    from capability_router.simulator.run import simulate as run_simulation

    given = [name for name, on in (("--day", day), ("--quick", quick), ("--trace", trace)) if on]
    if len(given) > 1:  # --day --quick ran the whole day (20-25 min), the --quick dropped
        raise click.UsageError(f"{' and '.join(given)} name two scenarios: give one of "
                               "--day, --quick or --trace")
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:  # an empty list ran all of them, as if the option were not given
        raise click.UsageError(f"--policies names no policy (known: {', '.join(POLICIES)})")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # each was simulated again in full, its row printed twice
        raise click.UsageError(f"--policies names {', '.join(twice)} twice: name each once")
    try:
        result = run_simulation(
            redis_url=sim_redis_url, trace=trace, day=day or not quick, quick=quick,
            scale=scale, seed=seed, policies=names,
            out=out, pools_path=pools_file, log=lambda line: click.echo(line, err=True))
    except (ValueError, EmpError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(result["table"])
    click.echo(result["json"])
    for path in result["charts"]:
        click.echo(f"chart: {path}", err=True)


def _banner(stack: Stack, workers: int, data_dir: Path, is_recorded: bool) -> None:
    """What is up, and how other shells reach it."""
    from emp_tasks import stack_state

    services = ", ".join(f"{name} {url}" for name, url in stack.services.items())
    click.echo(f"EMP is up: redis {stack.redis_url}, {workers} workers"
               f"{', ' + services if services else ''} (data and logs in {data_dir})")
    for note in stack.notes:
        click.echo(f"Note: {note}.")
    if is_recorded:
        click.echo(f"Recorded in {stack_state.state_path()}: `emp` and emp_tasks in other "
                   "shells use this stack unless EMP_REDIS_URL is set. To pin it in a shell:")
    else:
        other = stack_state.running()
        click.echo(f"Not recorded: {stack_state.state_path()} names another emp up "
                   f"(pid {other.pid if other else '?'}). To use this stack in a shell:")
    click.echo(f"  export EMP_REDIS_URL={stack.redis_url}")
