"""Start a Celery worker with a capability profile (what ``emp worker`` runs)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import celeryd_init

from capability_router.errors import InvalidProfile
from capability_router.eviction import warn_if_evicting
from capability_router.keys import DEFAULT_NAMESPACE
from capability_router.profile import WorkerProfile, names_services
from capability_router.residency import ResidencyReporter
from emp_tasks import defaults
from emp_tasks.claim_gate import BoundedClaimGate
from emp_tasks.connection import get_client, get_functions
from emp_tasks.producer import services
from emp_tasks.queue_outcomes import GaveUpReporter
from machine.connectors.factory import (
    DEFAULT_KIND_OF_SERVICE,
    configured_kind,
    connector_from_env,
    connector_of_kind,
)

logger = logging.getLogger("emp.worker")


def build_profile(app: Celery, **overrides: Any) -> WorkerProfile:
    """Profile from ``WORKER_*`` variables and flags, plus the connector's real models.

    Services default to every job type, except those needing an external
    service (``external_service`` tasks such as comfyui) unless
    ``EMP_CONNECTOR`` names a connector for them. With ``EMP_CONNECTOR`` set,
    the connector is initialized (waiting for its service) and the models it
    reports are merged into ``models``; raises ConnectorError if it is unusable.
    With a model cache, the catalog's models are offered too (``downloadable_models``).
    """
    profile = WorkerProfile.from_env(**overrides)
    connector = connector_from_env()
    known = services(app)
    if not overrides.get("services") and not names_services():
        served = connector.service if connector else None
        profile.services = sorted(
            name for name, task in known.items()
            if not getattr(task, "external_service", False) or name == served)
    unknown = [name for name in profile.services if name not in known]
    if unknown:  # a typo: the worker waited for good, or failed what it claimed
        raise InvalidProfile(
            f"WORKER_SERVICES: no job type of this app runs {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known)) or 'none'}; a project's own job types come "
            "from EMP_CELERY_CONFIG's imports)")
    if connector is not None:
        try:
            connector.initialize()
            reported = connector.available_models()
        finally:
            connector.close()
        for service, models in reported.items():
            profile.models[service] = sorted(set(profile.models.get(service, [])) | set(models))
    for service, models in downloadable_models(app, profile.services).items():
        profile.models[service] = sorted(set(profile.models.get(service, [])) | set(models))
    return profile


def downloadable_models(app: Celery, served: list[str]) -> dict[str, list[str]]:
    """The catalog's models, for each served job type that gets its models before it
    runs, when this machine has a model cache (``EMP_MODEL_CACHE_DIR``): the worker
    can run their jobs, downloading the model first. Read at start; a model added to
    the catalog later is offered by workers started after. A model larger than the
    cache's budget is not offered: its jobs wait for a machine that can hold it rather
    than fail here for good."""
    if not defaults.env("EMP_MODEL_CACHE_DIR"):
        return {}
    from capability_router.catalog import list_models
    from emp_tasks.connection import get_client
    from machine.models.manager import budget_bytes_from_env

    budget = budget_bytes_from_env()
    entries = list_models(get_client(app.conf.broker_url))
    names = [entry.name for entry in entries if entry.size <= budget]
    too_large = sorted(entry.name for entry in entries if entry.size > budget)
    if too_large:
        logger.warning("not offering %d catalog models larger than the model cache budget "
                       "(%d bytes, EMP_MODEL_CACHE_GB): %s", len(too_large), budget,
                       ", ".join(too_large[:10]) + (" ..." if len(too_large) > 10 else ""),
                       extra={"event": "worker_models_too_large"})
    tasks = services(app)
    return {service: names for service in served
            if names and getattr(tasks.get(service), "prepares_models", False)}


#: Services whose jobs run on an outside server: a worker serving one of them alone and
#: naming no ``EMP_CONNECTOR`` asks that server's health (its default connector) before it
#: claims. ``emp worker --services comfyui`` asked nothing: with no ComfyUI running it
#: took each job and held it up to EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS (120) waiting for
#: one, then spent a retry on it, while a worker whose ComfyUI runs could have taken it.
GATED_ALONE = ("comfyui",)


def _gate_connector(services: list[str] | None) -> Any:  # noqa: ANN401 - a Connector
    """``EMP_CONNECTOR``'s connector, else the default one of a ``GATED_ALONE`` service the
    worker serves alone; None for neither. ConnectorError for a setting it refuses."""
    connector = connector_from_env()
    if connector is None and services is not None and len(services) == 1 \
            and services[0] in GATED_ALONE:
        connector = connector_of_kind(DEFAULT_KIND_OF_SERVICE[services[0]])
    return connector


def warn_ungated_services(profile: WorkerProfile) -> None:
    """A warning at start for a worker that serves a ``GATED_ALONE`` service beside others
    without ``EMP_CONNECTOR`` (the README's ``--services comfyui,simulation``) while that
    service's server does not answer: its claims are not gated (a closed gate would stop
    the other services' jobs too), so each such job waits for the server, up to its
    startup timeout, then retries. Said once, with the fix; nothing when it answers."""
    served = list(profile.services)
    alone = [s for s in served if s in GATED_ALONE]
    if not alone or len(served) == 1 or configured_kind() or not defaults.health_gate():
        return
    for service in alone:
        kind = DEFAULT_KIND_OF_SERVICE[service]
        try:
            connector = connector_of_kind(kind)
        except Exception:  # noqa: BLE001 - its first job says what is wrong with it
            continue
        answer = BoundedClaimGate(connector.claim_gate, defaults.health_gate_timeout_seconds())()
        if not answer.open:
            logger.warning(
                "worker %s serves %s beside %s without EMP_CONNECTOR, so it takes %s jobs "
                "whether its server answers or not, and it does not answer now (%s): each "
                "such job waits for it, then retries. Serve %s on a worker of its own (or "
                "set EMP_CONNECTOR=%s) to take them only while it answers", profile.worker_id,
                service, ", ".join(s for s in served if s != service), service,
                answer.reason, service, kind, extra={"event": "worker_service_ungated"})


def claim_gate_options(services: list[str] | None = None) -> dict[str, Any]:
    """Transport options that make the worker ask its connector before each claim.

    The connector ``EMP_CONNECTOR`` names, else (``GATED_ALONE``) the default connector of
    the one service the worker serves, gets its own instance in this (the claiming)
    process, built once here, before Celery forks its pool. Without either, or with
    ``EMP_HEALTH_GATE=off``, the worker claims as before.
    """
    connector = _gate_connector(services)
    if connector is None or not defaults.health_gate():
        return {}
    return {"claim_gate": BoundedClaimGate(connector.claim_gate,
                                           defaults.health_gate_timeout_seconds(),
                                           open_for=defaults.health_gate_open_seconds()),
            "claim_gate_retry_seconds": defaults.health_gate_seconds()}


def report_start_residency(app: Celery, profile: WorkerProfile, pools: list[str]) -> None:
    """Report where the connector's models are at start (what it has on disk, preloaded),
    replacing what an earlier life of this worker left."""
    connector = connector_from_env()
    if connector is None:
        return
    try:
        connector.initialize()
        residency = connector.residency()
        ResidencyReporter(get_client(app.conf.broker_url), profile.worker_id, pools,
                          profile.signature).report(residency)
    except Exception:  # claims only lose a preference; the first job reports again
        logger.warning("could not report model residency at start", exc_info=True)
    finally:
        connector.close()


def prepare_worker(app: Celery, profile: WorkerProfile, pools: list[str]) -> None:
    """Set up what the transport claims with before Celery consumes ``pools``: the profile,
    the claim gate, the gave-up reporter (transport options), the pools' queue settings,
    the eviction warning and the start residency. ``emp worker`` and a plain
    ``celery -A emp_tasks.app worker`` (``emp_tasks.plain_worker``) both come through here."""
    options = dict(app.conf.broker_transport_options or {})
    options["worker_profile"] = profile.as_dict()
    options["worker_pools"] = list(pools)
    options.update(claim_gate_options(list(profile.services)))
    warn_ungated_services(profile)
    # Jobs the queue fails with no run (attempts used up) still reach the result backend.
    options["on_job_gave_up"] = GaveUpReporter(app)
    app.conf.broker_transport_options = options
    settings = defaults.queue_settings()
    for pool in pools:
        get_functions(app.conf.broker_url, pool).configure(**settings)
    warn_if_evicting(get_client(app.conf.broker_url), f"worker {profile.worker_id}")
    report_start_residency(app, profile, pools)


def run_worker(
    app: Celery, profile: WorkerProfile, pools: list[str] | None = None,
    concurrency: int = defaults.CONCURRENCY, loglevel: str = "info",
    extra_args: list[str] | None = None,
) -> int:
    """Run a Celery worker consuming ``pools`` with ``profile``; returns its exit status
    when it stops: non-zero after Celery's "Unrecoverable error", as ``celery worker``
    exits (``app.worker_main`` drops the status, so such a worker exited 0 and a
    supervisor took the failure for a clean stop)."""
    pools = pools or [DEFAULT_NAMESPACE]
    prepare_worker(app, profile, pools)
    argv = [
        "worker", "-Q", ",".join(pools), "-c", str(concurrency), "-l", loglevel,
        "-n", f"{profile.worker_id}@%h", *(extra_args or []),
    ]
    built: list[Any] = []

    def keep(sender: Any = None, instance: Any = None, **_: Any) -> None:
        built.append(instance)

    celeryd_init.connect(keep, weak=False)
    try:
        app.worker_main(argv)
    finally:
        celeryd_init.disconnect(keep)
    return (getattr(built[-1], "exitcode", None) or 0) if built else 0

