"""Spans a test's OTLP receiver got: each POST /v1/traces decoded as an OTLP
``ExportTraceServiceRequest`` (protobuf, as the SDK's OTLP/HTTP exporter sends it)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import Receiver
from emp_tasks import tracing


@dataclass
class Span:
    """One received span, decoded."""

    name: str
    service: str
    trace_id: int
    span_id: int
    parent_id: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool
    #: (name, attributes) of each event, in order.
    events: list[tuple[str, dict[str, Any]]]


def value_of(any_value: Any) -> Any:
    """An OTLP AnyValue as Python (an array as a list)."""
    if any_value.WhichOneof("value") == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def spans_of(sink: Receiver) -> list[Span]:
    """Every span the receiver got, from its POSTs to /v1/traces."""
    with sink.lock:
        bodies = [(r.headers, r.body) for r in sink.requests if r.path == "/v1/traces"]
    spans = []
    for headers, body in bodies:
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(Span(
                        span.name, resource.get("service.name", ""),
                        int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big"),
                        int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else 0,
                        span.start_time_unix_nano, span.end_time_unix_nano,
                        {a.key: value_of(a.value) for a in span.attributes},
                        span.status.code == span.status.STATUS_CODE_ERROR,
                        [(e.name, {a.key: value_of(a.value) for a in e.attributes})
                         for e in span.events]))
    return spans


def job_spans(sink: Receiver, job_id: str) -> dict[str, list[Span]]:
    """The job's spans by name."""
    out: dict[str, list[Span]] = {}
    for span in spans_of(sink):
        if span.attributes.get("emp.job_id") == job_id or (
                span.name == "routing" and span.trace_id == tracing.trace_ids(job_id)[0]):
            out.setdefault(span.name, []).append(span)
    return out
