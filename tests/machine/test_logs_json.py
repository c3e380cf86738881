"""JSON log lines: every context, deployment and event field on every line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from machine.connectors.events import log_event
from machine.logs import LINE_FIELDS, ContextFilter, context_from_env, json_formatter

ENV = {"MACHINE_ID": "box", "WORKER_ID": "box-simulation-0", "WORKER_SERVICES": "simulation",
       "EMP_CONNECTOR_ID": "simulation-0", "EMP_DEPLOYMENT_ENV": "staging",
       "WORKER_REGION": "eu-west", "EMP_CLOUD_PROVIDER": "vast", "EMP_INSTANCE_ID": "i-42"}


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """JSON lines of the ``emp.connector`` and ``test.emp`` loggers, in a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter(context_from_env(ENV)))
    loggers = [logging.getLogger("emp.connector"), logging.getLogger("test.emp")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_connector_events_carry_every_field(lines: io.StringIO) -> None:
    log_event("job_completed", "simulation-0", "simulation", job_id="job-1", duration_ms=1200)
    log_event("job_failed", "simulation-0", "simulation", job_id="job-2",
              level=logging.WARNING, message="CUDA out of memory", error_type="memory")
    done, failed = parsed(lines)
    assert set(LINE_FIELDS) <= set(done)
    assert {k: done[k] for k in ("machine_id", "worker_id", "service_type", "connector_id",
                                 "job_id", "event", "deployment_env", "region",
                                 "cloud_provider", "instance_id", "duration_ms", "level",
                                 "logger")} == {
        "machine_id": "box", "worker_id": "box-simulation-0", "service_type": "simulation",
        "connector_id": "simulation-0", "job_id": "job-1", "event": "job_completed",
        "deployment_env": "staging", "region": "eu-west", "cloud_provider": "vast",
        "instance_id": "i-42", "duration_ms": 1200, "level": "INFO", "logger": "emp.connector"}
    assert failed["error_type"] == "memory" and failed["level"] == "WARNING"
    assert failed["message"] == "job_failed job=job-2: CUDA out of memory"
    assert done["timestamp"].endswith("+00:00") and isinstance(done["pid"], int)


def test_plain_lines_get_nulls_not_missing_keys(lines: io.StringIO) -> None:
    logging.getLogger("test.emp").info("hello %s", "world")
    line, = parsed(lines)
    assert line["message"] == "hello world" and set(LINE_FIELDS) <= set(line)
    assert line["job_id"] is None and line["event"] is None and line["worker_id"] == ENV[
        "WORKER_ID"]


def test_a_record_value_wins_over_the_process_context(lines: io.StringIO) -> None:
    logging.getLogger("test.emp").info("x", extra={"service_type": "comfyui", "job_id": "j9"})
    line, = parsed(lines)
    assert line["service_type"] == "comfyui" and line["job_id"] == "j9"


def test_exceptions_are_kept(lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("test.emp").exception("failed")
    line, = parsed(lines)
    assert "ValueError: boom" in line["exc_info"]


def test_deployment_fields_default_to_null_and_the_hostname() -> None:
    context = context_from_env({})
    assert context["deployment_env"] is None and context["region"] is None
    assert context["instance_id"]  # the hostname
    assert context_from_env({"EMP_REGION": "us", "WORKER_REGION": "eu"})["region"] == "us"
