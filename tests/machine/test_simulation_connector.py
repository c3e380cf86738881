"""The simulation connector: steps, progress interval, failure rate and classification."""

from __future__ import annotations

import threading

import pytest

from machine.connectors import (
    ConnectorError,
    ErrorType,
    JobCancelledByService,
    JobInput,
    Progress,
    make_connector,
)
from machine.connectors.simulation import FAILURE_MESSAGES


def job(job_id: str = "sim", **payload: object) -> JobInput:
    return JobInput(job_id, "simulation", dict(payload))


def test_steps_report_progress_after_each_step() -> None:
    connector = make_connector("simulation", {"steps": 4, "duration_seconds": 0.04})
    reports: list[Progress] = []
    output = connector.run_job(job(), reports.append)
    assert [r.percent for r in reports] == [25, 50, 75, 100]
    assert reports[-1].details == {"step": 4, "total_steps": 4}
    assert output.success and output.data["steps"] == 4 and output.processing_time_ms >= 30


def test_progress_interval_thins_reports_but_keeps_the_last() -> None:
    connector = make_connector("simulation", {"progress_interval_seconds": 60})
    reports: list[Progress] = []
    connector.run_job(job(steps=20, duration=0.02), reports.append)
    assert [r.percent for r in reports] == [5, 100]


@pytest.mark.parametrize("failure_type", [t.value for t in FAILURE_MESSAGES])
def test_each_failure_type_is_classified_like_a_real_one(failure_type: str) -> None:
    connector = make_connector("simulation", {"failure_rate": 1, "failure_type": failure_type})
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job(steps=3, duration=0), lambda r: None)
    assert caught.value.error_type == failure_type
    assert caught.value.retryable == ErrorType(failure_type).retryable


def test_failure_rate_is_honoured_and_repeatable_with_a_seed() -> None:
    def outcomes(seed: int) -> list[str]:
        connector = make_connector("simulation", {
            "failure_rate": 0.3, "failure_type": "random", "seed": seed, "steps": 1,
            "duration_seconds": 0})
        results = []
        for n in range(400):
            try:
                connector.run_job(job(f"j{n}"), lambda r: None)
                results.append("ok")
            except ConnectorError as exc:
                results.append(exc.error_type.value)
        return results

    first = outcomes(7)
    assert first == outcomes(7)
    failures = [r for r in first if r != "ok"]
    assert 80 <= len(failures) <= 160  # 30% of 400, well inside 5 sigma
    assert len(set(failures)) >= 4  # "random" picks among the types


def test_payload_overrides_failure_settings() -> None:
    connector = make_connector("simulation", {"failure_rate": 1})
    assert connector.run_job(job(failure_rate=0, steps=1, duration=0), lambda r: None).success
    with pytest.raises(ConnectorError, match="unknown simulation failure type"):
        connector.run_job(job(failure_rate=1, failure_type="gremlins"), lambda r: None)


@pytest.mark.parametrize(("field", "value"), [
    ("steps", "abc"), ("steps", -1), ("steps", 2.5), ("steps", 1e9), ("steps", True),
    ("duration", -1), ("duration", 1e10), ("duration", "soon"), ("duration", [1]),
    ("failure_rate", 2), ("failure_rate", -0.1), ("failure_rate", None),
])
def test_a_payload_override_it_cannot_use_fails_the_job_naming_it(field: str,
                                                                   value: object) -> None:
    """Tried: each bad value in a job's payload. Before, "abc" failed the job with a bare
    ValueError, 1e10 s with an OverflowError, -1 s ran at once, 1e9 steps would have sent a
    progress event per step for hours. Now: a validation error (not retried) naming the
    field, before any step or progress report."""
    connector = make_connector("simulation", {"steps": 2, "duration_seconds": 0})
    reports: list[Progress] = []
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job(**{field: value}), reports.append)
    assert caught.value.error_type == ErrorType.VALIDATION and not caught.value.retryable
    assert str(caught.value).startswith(f"[validation] payload {field} must be a")
    assert reports == []


def test_payload_overrides_at_their_bounds_or_sent_as_text_are_taken() -> None:
    connector = make_connector("simulation", {})
    assert connector.run_job(job(steps=10_000, duration=0, failure_rate=0),
                             lambda r: None).success
    # 0 steps runs one, as it always did (the job-size check at submit takes 0).
    assert connector.run_job(job(steps=0, duration=0), lambda r: None).data["steps"] == 1
    # A number sent as text is read as one ("5.0" steps: int("5.0") raised).
    assert connector.run_job(job(steps="5.0", duration="0"), lambda r: None).data["steps"] == 5


def test_cancel_stops_between_steps() -> None:
    connector = make_connector("simulation", {"steps": 100, "duration_seconds": 10})
    errors: list[BaseException] = []

    def run() -> None:
        try:
            connector.run_job(job("long"), lambda r: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    while not connector.cancel_job("long"):
        pass
    thread.join(5)
    assert isinstance(errors[0], JobCancelledByService)
    assert connector.cancel_job("long") is False


def test_models_setting_is_reported() -> None:
    assert make_connector("simulation", {"models": "sim-a, sim-b"}).available_models() == {
        "simulation": ["sim-a", "sim-b"]}
    assert make_connector("simulation", {}).available_models() == {}
