"""Job tracing (``emp_tasks.tracing``): spans of real processes reach a local OTLP receiver.

The receiver is the tests' HTTP receiver; each POST /v1/traces is decoded as
an OTLP ``ExportTraceServiceRequest``. The API server, the worker and the
webhook service are real processes; off, a worker and a producer load no
OpenTelemetry module at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from otlp_spans import job_spans, spans_of

from conftest import ROOT, wait_for
from emp_tasks import tracing
from emp_tasks.producer import submit

#: Spans leave every 100 ms instead of 5 s.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
WEBHOOK_ENV = {"EMP_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
               "EMP_WEBHOOK_NAMESPACE_REFRESH_SECONDS": "1"}


@pytest.fixture
def traced_here(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a setter
    """Turn tracing on in this (the test) process for an endpoint; off again after."""
    def on(endpoint: str) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "test-producer")
        tracing.reset()

    yield on
    tracing.reset()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing.reset()


def test_wanted_reads_the_standard_variables() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                               "OTEL_SDK_DISABLED": "TRUE"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                               "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": " "})
    trace_id, span_id = tracing.trace_ids("job-1")
    assert tracing.trace_ids("job-1") == (trace_id, span_id) != tracing.trace_ids("job-2")
    assert 0 < trace_id < 2**128 and 0 < span_id < 2**64


def test_a_trace_id_ratio_sampler_decides_alike_for_the_root_and_the_worker_spans(
        monkeypatch: pytest.MonkeyPatch, receiver) -> None:
    from emp_tasks.tracing_sdk import JobTracer

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver().url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    tracer = JobTracer("sampling-test")
    try:
        decisions = []
        for n in range(40):
            job_id = f"job-{n}"
            with tracer.root(job_id) as root:
                sampled = root.is_recording()
            with tracer.span("run", job_id) as run:  # as a worker makes it: no current span
                assert run.is_recording() == sampled, job_id
            decisions.append(sampled)
        assert 5 < sum(decisions) < 35  # about half, decided by the trace id
    finally:
        tracer.shutdown()


def test_endpoint_without_the_extra_logs_one_line_and_stays_off() -> None:
    code = textwrap.dedent("""
        import logging, sys
        sys.modules["opentelemetry"] = None  # as if the tracing extra were not installed
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
        from emp_tasks import tracing
        print(tracing.job_tracer(), tracing.job_tracer())
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
             "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert done.stdout.strip() == "None None", done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("emp.tracing")]
    assert len(lines) == 1 and "tracing" in lines[0] and "pip install" in lines[0], done.stderr


#: Modules tracing loads when on. (Not all of ``opentelemetry``: redis-py 8 imports the
#: metrics SDK and the trace API itself whenever they are installed.)
TRACING_MODULES = ("emp_tasks.tracing_sdk", "opentelemetry.sdk.trace",
                   "opentelemetry.exporter")

PROBE_CONFIG = f"""
import json, os, sys
from celery.signals import task_postrun

def _probe(**_):
    loaded = sorted(m for m in sys.modules if m.startswith({TRACING_MODULES!r}))
    with open(os.environ["TRACE_PROBE_FILE"], "a") as out:
        out.write(json.dumps(loaded) + "\\n")

task_postrun.connect(_probe, weak=False)
"""


@pytest.mark.timeout(90)
def test_off_nothing_is_sent_and_no_sdk_is_loaded(app, start_worker, receiver,
                                                  tmp_path: Path) -> None:
    sink = receiver()
    (tmp_path / "trace_probe_config.py").write_text(PROBE_CONFIG)
    probe = tmp_path / "probe.jsonl"
    # The worker: no endpoint at all (the default).
    start_worker("w-off", EMP_CELERY_CONFIG="trace_probe_config", TRACE_PROBE_FILE=str(probe),
                 PYTHONPATH=f"{ROOT}:{tmp_path}")
    # A producer script: an endpoint, but the SDK disabled.
    code = textwrap.dedent("""
        import sys
        from emp_tasks.app import create_app
        from emp_tasks.producer import submit
        app = create_app(sys.argv[1])
        result = submit("echo", {"n": 1}, app=app)
        result.get(timeout=30)
        print(result.id, sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[2:]))))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code, app.conf.broker_url, *TRACING_MODULES],
        capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                         "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SDK_DISABLED": "true",
                         **FAST_EXPORT})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split(" ", 1)[1].strip() == "[]"
    wait_for(lambda: probe.exists() and probe.read_text().strip(), timeout=10,
             message="the worker's probe")
    assert [json.loads(line) for line in probe.read_text().splitlines()] == [[]]
    assert sink.requests == []


@pytest.mark.timeout(120)
def test_a_jobs_spans_reach_the_otlp_receiver_as_one_trace(
        receiver, app, start_worker, start_server, traced_here) -> None:
    sink = receiver()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, **FAST_EXPORT}
    api = start_server("api", **otel)
    hooks = start_server("webhooks", **otel, **WEBHOOK_ENV)
    hook_sink = receiver()
    reply = requests.post(hooks.base + "/webhooks", timeout=10, json={
        "url": hook_sink.url + "/hook", "events": ["complete_job"]})
    assert reply.status_code == 201, reply.text
    # The worker names the full traces URL instead of the base one.
    start_worker("w-trace", MACHINE_ID="m-trace", **FAST_EXPORT,
                 OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=sink.url + "/v1/traces")
    traced_here(sink.url)

    via_api = requests.post(api.base + "/api/jobs", timeout=30, json={
        "service_required": "echo", "payload": {"x": 1}})
    assert via_api.status_code == 201, via_api.text
    via_producer = submit("echo", {"x": 2}, app=app)
    by_name = app.send_task("emp.echo", kwargs={"x": 3, "fail_times": 1})  # one retry (1 s)
    via_producer.get(timeout=30)
    by_name.get(timeout=30)
    tracing.reset()  # flush this process's spans
    jobs = {via_api.json()["job_id"]: "emp-api", via_producer.id: "test-producer",
            by_name.id: "test-producer"}

    wanted = {"submit", "routing", "wait", "preparing", "run", "webhook delivery"}

    def complete() -> bool:
        """Every span of every job arrived (the retried job's runs twice): each process
        sends its own batches, so the last to arrive may come from any of them."""
        for job_id in jobs:
            spans = job_spans(sink, job_id)
            runs = 2 if job_id == by_name.id else 1
            if not wanted <= set(spans) or any(
                    len(spans[name]) < runs for name in ("wait", "preparing", "run")):
                return False
        return True

    deadline = time.monotonic() + 30
    while not complete():
        if time.monotonic() > deadline:
            pytest.fail("not every span of the three jobs arrived in 30 s: got "
                        f"{sorted((s.name, s.service) for s in spans_of(sink))}")
        time.sleep(0.1)

    for job_id, producer in jobs.items():
        spans = job_spans(sink, job_id)
        trace_id, root_id = tracing.trace_ids(job_id)
        assert {s.trace_id for group in spans.values() for s in group} == {trace_id}
        (root,) = spans["submit"]
        assert (root.span_id, root.parent_id, root.service) == (root_id, 0, producer)
        assert root.attributes["emp.pool"] == "default"
        assert root.attributes["emp.service"] == "echo"
        (routing,) = spans["routing"]
        assert routing.parent_id == root_id and routing.service == producer
        runs = 2 if job_id == by_name.id else 1
        for name in ("wait", "preparing", "run"):
            assert len(spans[name]) == runs, (name, spans[name])
            for attempt, span in enumerate(sorted(spans[name], key=lambda s: s.start_ns), 1):
                assert span.parent_id == root_id and span.service == "emp-worker", name
                assert span.attributes["emp.pool"] == "default"
                assert span.attributes["emp.worker_id"] == "w-trace"
                assert span.attributes["emp.machine_id"] == "m-trace"
                assert span.attributes["emp.attempt"] == attempt
        delivery = spans["webhook delivery"][0]
        assert delivery.parent_id == root_id and delivery.service == "emp-webhooks"
        assert delivery.attributes["emp.event_type"] == "complete_job"
        assert delivery.attributes["emp.outcome"] == "delivered"
        waits = sorted(spans["wait"], key=lambda s: s.start_ns)
        runs_ = sorted(spans["run"], key=lambda s: s.start_ns)
        # The wait's times are the record's, in whole milliseconds (Redis TIME).
        assert root.start_ns // 1_000_000 <= waits[0].start_ns // 1_000_000
        assert routing.start_ns >= root.start_ns and routing.end_ns <= root.end_ns
        for wait, run in zip(waits, runs_, strict=True):
            assert wait.start_ns <= wait.end_ns <= run.start_ns <= run.end_ns
        if runs == 2:  # the retry waited from when it was due, after the failed run
            assert runs_[0].error and not runs_[1].error
            assert runs_[0].end_ns <= waits[1].start_ns
        assert runs_[-1].end_ns <= delivery.start_ns


@pytest.mark.timeout(90)
def test_spans_leave_at_exit_without_waiting_for_the_batch_delay(
        app, start_worker, receiver) -> None:
    """Default batching (5 s): a producer script that exits and a worker that is stopped
    send their last spans on the way out."""
    sink = receiver()
    worker = start_worker("w-exit", OTEL_EXPORTER_OTLP_ENDPOINT=sink.url)
    code = textwrap.dedent("""
        import sys
        from emp_tasks.app import create_app
        from emp_tasks.producer import submit
        result = submit("echo", {"n": 1}, app=create_app(sys.argv[1]))
        result.get(timeout=30)
        print(result.id)
    """)
    done = subprocess.run(
        [sys.executable, "-c", code, app.conf.broker_url], capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                         "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url})
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = done.stdout.strip()
    assert set(job_spans(sink, job_id)) == {"submit", "routing"}  # sent at the script's exit
    worker.stop()  # warm shutdown, well within the 5 s batch delay
    assert {"wait", "preparing", "run"} <= set(job_spans(sink, job_id)), worker.log_path.read_text()


def test_record_times_become_span_times_exactly() -> None:
    """Tried: 1,796,129,858,481 ms (a job's created_at on 2026-12-01), which ``ms * 1e6`` in
    floats made 1,796,129,858,480,999,936 ns: the wait span began a millisecond before the
    job's submit span (a clean-clone run failed on it)."""
    from emp_tasks.tracing import ms_to_ns

    assert ms_to_ns("1796129858481") == 1_796_129_858_481_000_000
    assert ms_to_ns(1796129858481.5) == 1_796_129_858_481_500_000


def test_shutdown_ends_the_flushing_thread(monkeypatch: pytest.MonkeyPatch, receiver) -> None:
    """Tried: switching tracing on and off five times in one process (as tests and
    benchmarks do); each tracer's flushing thread used to wait forever after shutdown."""
    import threading

    from emp_tasks.tracing_sdk import JobTracer

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver().url)

    def flushers() -> int:
        return sum(t.name == "emp-trace-flush" for t in threading.enumerate())

    before = flushers()
    for n in range(5):
        tracer = JobTracer(f"switch-{n}")
        assert flushers() == before + 1
        tracer.flush_at_exit(timeout_seconds=5)  # the thread still serves flushes until then
        tracer.shutdown()
        wait_for(lambda: flushers() == before, timeout=5, message="the flushing thread ended")
