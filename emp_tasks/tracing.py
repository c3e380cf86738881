"""Job tracing: each job's life as OpenTelemetry spans, one trace per job, over OTLP.

Off unless an OTLP endpoint is configured, and then free: with neither
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` nor ``OTEL_EXPORTER_OTLP_ENDPOINT``
set (or with ``OTEL_SDK_DISABLED=true``, or ``OTEL_TRACES_EXPORTER=none``)
``job_tracer()`` returns None after one look at the environment per
process, and neither the tracing SDK nor the exporter is imported (redis-py 8
imports OpenTelemetry's metrics SDK by itself where it is installed; that is
not ours to avoid). The SDK-backed side is
``emp_tasks.tracing_sdk`` (the ``tracing`` extra); an endpoint without the
extra logs one warning and tracing stays off.

One job = one trace: the trace id is derived from the job id
(``trace_ids``), so the producer (or the API server), the worker and the
webhook service each add spans to the job's trace without passing a
context through the message or the record. The ``submit`` span is the root
(its span id is derived too); spans made elsewhere are its children.

Spans: ``submit`` (root, around ``apply_async``) with ``routing`` inside it;
``wait`` (created_at, or a retry's due time, -> assigned_at, from the
record, in milliseconds), ``preparing`` and
``run`` in the worker; ``webhook delivery`` per attempt in the webhook
service. Attributes: ``emp.job_id``, ``emp.service``, ``emp.pool``,
``emp.worker_id``, ``emp.machine_id``, ``emp.attempt`` where known.
``OTEL_SERVICE_NAME`` names the process (default: ``emp-worker``,
``emp-api``, ``emp-webhooks``, or ``emp`` for a producer script); the
exporter reads the other standard ``OTEL_EXPORTER_OTLP_*`` and
``OTEL_BSP_*`` variables itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emp_tasks.tracing_sdk import JobTracer

logger = logging.getLogger("emp.tracing")

#: Variables that name an OTLP endpoint; either turns tracing on.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

#: Attribute names, one place.
JOB_ID, SERVICE, POOL, WORKER_ID, MACHINE_ID, ATTEMPT = (
    "emp.job_id", "emp.service", "emp.pool", "emp.worker_id", "emp.machine_id", "emp.attempt")

_UNSET: Any = object()
#: This process's tracer: _UNSET until the first look, then a JobTracer or None (off).
_tracer: Any = _UNSET
#: ``service.name`` when OTEL_SERVICE_NAME is unset; the CLI commands set theirs.
_service_name = "emp"


def _forget() -> None:
    """After a fork: the child builds its own tracer (the exporter's thread is not copied)."""
    global _tracer
    _tracer = _UNSET


os.register_at_fork(after_in_child=_forget)


def set_service_name(name: str) -> None:
    """The default ``service.name`` of this process (``OTEL_SERVICE_NAME`` wins); no import."""
    global _service_name
    _service_name = name


def wanted(environ: Any = None) -> bool:
    """True when the environment asks for traces: an endpoint set and the SDK not disabled."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def job_tracer() -> JobTracer | None:
    """This process's tracer, or None when tracing is off (decided once per process)."""
    global _tracer
    if _tracer is _UNSET:
        _tracer = _build()
    return _tracer


def reset() -> None:
    """Shut the tracer down (flushing its spans); the next ``job_tracer()`` reads the
    environment again. For benchmarks and tests that switch tracing in one process."""
    global _tracer
    if _tracer is not _UNSET and _tracer is not None:
        _tracer.shutdown()
    _tracer = _UNSET


def _build() -> JobTracer | None:
    if not wanted():
        return None
    try:
        from emp_tasks.tracing_sdk import JobTracer
    except ImportError as exc:
        logger.warning("tracing: an OTLP endpoint is set but OpenTelemetry is not installed "
                       "(pip install 'emp-job-queue[tracing]'); traces are off: %s", exc)
        return None
    service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or _service_name
    return JobTracer(service)


def trace_ids(job_id: str) -> tuple[int, int]:
    """(trace id, root span id) of a job: the first 16 and next 8 bytes of its SHA-256."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return (int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1)


def span(name: str, job_id: str | None = None,
         attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A span of the job's trace around a block (yields the span, or None when off).

    Inside another span of this process (``routing`` in ``submit``) it nests
    there; else it is a child of the job's root, found from ``job_id``.
    """
    tracer = job_tracer()
    if tracer is None or (job_id is None and not tracer.in_span()):
        return nullcontext()
    return tracer.span(name, job_id, attributes)


def current_span() -> Any | None:
    """The recording span this block runs in (to add events to), or None (off, or none)."""
    tracer = job_tracer()
    return None if tracer is None else tracer.current()


def record_wait(context: Any, service: str, worker_id: str,
                machine_id: str) -> dict[str, Any]:
    """Add the job's ``wait`` span (created_at -> assigned_at, from its record) and return
    the attributes of its worker-side spans. Call only with tracing on."""
    tracer = job_tracer()
    attributes = {SERVICE: service, POOL: context.namespace, WORKER_ID: worker_id,
                  MACHINE_ID: machine_id, ATTEMPT: context.attempt}
    if tracer is None:
        return attributes
    created, retry_at, assigned = context.functions.client.hmget(
        context.functions.keys.job(context.job_id), "created_at", "retry_at", "assigned_at")
    if created and assigned:
        # A retried job waited again from when its retry was due, not from its submit.
        since = max(float(created), float(retry_at or 0))
        tracer.record("wait", context.job_id, ms_to_ns(since), ms_to_ns(assigned), attributes)
    return attributes


def ms_to_ns(ms: float | str) -> int:
    """Epoch ms as ns, exact to the µs: ``ms * 1e6`` in floats is not (1,796,129,858,481 ms
    became ...480,999,936 ns, a millisecond earlier once truncated)."""
    return round(float(ms) * 1000) * 1000


__all__ = ["ENDPOINT_VARIABLES", "current_span", "job_tracer", "record_wait", "reset",
           "set_service_name", "span", "trace_ids", "wanted"]
