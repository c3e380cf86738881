"""The OpenTelemetry side of job tracing: a tracer provider exporting over OTLP/HTTP.

Imported by ``emp_tasks.tracing`` only when an endpoint is configured, so a
process with tracing off never loads the SDK. The provider is this module's
own (not the global one), so an application that configures OpenTelemetry
for itself keeps its provider. Spans leave in batches (``BatchSpanProcessor``;
``OTEL_BSP_SCHEDULE_DELAY`` ms, default 5000); a Celery pool process flushes
when it shuts down, any process at exit, each waiting at most
``EXIT_FLUSH_SECONDS``: with the collector down, the exporter would retry for
its whole timeout (10 s) and hold the exit that long.
"""

from __future__ import annotations

import atexit
import contextvars
import os
import queue
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator

from emp_tasks.tracing import JOB_ID, trace_ids

#: Longest a process's exit, or a pool process's shutdown, waits for its last spans (2 s
#: was too short for a first export on a loaded machine: a script's spans were lost).
EXIT_FLUSH_SECONDS = 5.0

#: The job whose root span is being started: its ids come from the job id.
_root_of: contextvars.ContextVar[str | None] = contextvars.ContextVar("emp_root_of", default=None)


class JobIdGenerator(IdGenerator):
    """Random ids, except for a job's root span: trace and span id derived from the job id."""

    def generate_trace_id(self) -> int:
        job_id = _root_of.get()
        return trace_ids(job_id)[0] if job_id else random.getrandbits(128) or 1

    def generate_span_id(self) -> int:
        job_id = _root_of.get()
        return trace_ids(job_id)[1] if job_id else random.getrandbits(64) or 1


def job_root(job_id: str, sampler: Any) -> trace.SpanContext:
    """The job's root span (``submit``) as a remote parent, from the job id alone.

    Sampled as the root itself was: ``sampler`` is asked about a root of this trace
    id, so a trace-id-ratio sampler decides alike in every process.
    """
    trace_id, span_id = trace_ids(job_id)
    sampled = sampler.should_sample(None, trace_id, "submit").decision.is_sampled()
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)


class JobTracer:
    """Spans of jobs' traces, exported over OTLP/HTTP (endpoint from ``OTEL_*``).

    :param service_name: ``service.name`` of the spans' resource.
    """

    def __init__(self, service_name: str) -> None:
        resource = Resource.create({SERVICE_NAME: service_name})
        self.provider = TracerProvider(resource=resource, id_generator=JobIdGenerator(),
                                       shutdown_on_exit=False)  # see flush_at_exit
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("emp_tasks")
        self._shut = False
        self._pid = os.getpid()
        # Python 3.12 refuses to start a thread at exit: the flushing thread waits from now.
        # A request is the Event to set once flushed; None stops the thread (shutdown).
        self._flush_requests: queue.SimpleQueue[threading.Event | None] = queue.SimpleQueue()
        threading.Thread(target=self._flush_when_asked, daemon=True,
                         name="emp-trace-flush").start()
        atexit.register(self.flush_at_exit)
        _flush_on_pool_shutdown(self)

    def in_span(self) -> bool:
        """True inside a recording span of this process."""
        return trace.get_current_span().is_recording()

    def current(self) -> trace.Span | None:
        """The current span when it records, else None."""
        span = trace.get_current_span()
        return span if span.is_recording() else None

    def _parent(self, job_id: str | None) -> otel_context.Context | None:
        if job_id is None or self.in_span():
            return None  # the current span
        root = job_root(job_id, self.provider.sampler)
        return trace.set_span_in_context(trace.NonRecordingSpan(root))

    @contextmanager
    def root(self, job_id: str, name: str = "submit",
             attributes: dict[str, Any] | None = None) -> Iterator[trace.Span]:
        """The job's root span, current for the block; its ids come from ``job_id``."""
        token = _root_of.set(job_id)
        try:
            span = self.tracer.start_span(name, context=otel_context.Context(),
                                          attributes={JOB_ID: job_id, **(attributes or {})})
        finally:
            _root_of.reset(token)
        with trace.use_span(span, end_on_exit=True):
            yield span

    @contextmanager
    def span(self, name: str, job_id: str | None,
             attributes: dict[str, Any] | None = None) -> Iterator[trace.Span]:
        """A span of the job's trace, current for the block (see ``tracing.span``)."""
        attrs = {JOB_ID: job_id, **(attributes or {})} if job_id else dict(attributes or {})
        with self.tracer.start_as_current_span(name, context=self._parent(job_id),
                                               attributes=attrs) as span:
            yield span

    def record(self, name: str, job_id: str, start_ns: int, end_ns: int,
               attributes: dict[str, Any] | None = None) -> None:
        """A finished span with given times (the ``wait``, read from the record)."""
        span = self.tracer.start_span(name, context=self._parent(job_id), start_time=start_ns,
                                      attributes={JOB_ID: job_id, **(attributes or {})})
        span.end(end_time=max(start_ns, end_ns))

    def _flush_when_asked(self) -> None:
        while (done := self._flush_requests.get()) is not None:
            try:
                self.provider.force_flush()
            finally:
                done.set()

    def flush_at_exit(self, timeout_seconds: float = EXIT_FLUSH_SECONDS) -> None:
        """Send the queued spans, waiting at most ``timeout_seconds`` (the SDK's
        ``force_flush`` ignores its timeout, and a collector that is down would hold
        the exit for the exporter's 10 s): the flushing thread is a daemon."""
        if self._shut or os.getpid() != self._pid:
            return  # a forked child inherits this hook, and a copy of the parent's queue
        done = threading.Event()
        self._flush_requests.put(done)
        done.wait(timeout_seconds)

    def shutdown(self) -> None:
        """Flush and stop (tests and benchmarks that switch tracing in one process)."""
        self._shut = True
        atexit.unregister(self.flush_at_exit)
        self._flush_requests.put(None)
        self.provider.shutdown()


def _flush_on_pool_shutdown(tracer: JobTracer) -> None:
    """A Celery pool process that exits sends its last spans first."""
    from celery.signals import worker_process_shutdown

    def flush(**_: Any) -> None:
        tracer.flush_at_exit()

    worker_process_shutdown.connect(flush, weak=False)
