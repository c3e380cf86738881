"""Log shipping's settings are refused at the start of ``emp worker`` and ``emp machine``.

Before, ``machine.shipping`` read them leniently when logging was set up: a malformed
number became its default, a queue or batch size of 0 became 1, a negative (or 0)
backoff retried a down receiver without a pause, ``FLUENTD_PORT`` was pasted into the
URL as given, and ``FLUENTD_SECURE`` was read only when ``FLUENTD_HOST`` was set. Both
commands started as if nothing were wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from capability_router.env import SettingError
from machine.shipping import LogShipper, shipper_from_env, shipping_url
from machine.status import read_machine
from tests.emp_tasks.test_cli import run

#: No Redis answers here: the refusals come before the first connection.
NO_REDIS = {"EMP_REDIS_URL": "redis://127.0.0.1:1/0"}
FLAG_WORDS = "one of 1, true, yes, on (on) or 0, false, no, off (off)"

#: (variable, value, what the one line says after "Error: ").
BAD = [
    ("EMP_LOG_QUEUE_SIZE", "0", "EMP_LOG_QUEUE_SIZE must be at least 1, got '0'"),
    ("EMP_LOG_QUEUE_SIZE", "10k", "EMP_LOG_QUEUE_SIZE must be an integer, got '10k'"),
    ("EMP_LOG_QUEUE_SIZE", "1e3", "EMP_LOG_QUEUE_SIZE must be an integer, got '1e3'"),
    ("EMP_LOG_BATCH_SIZE", "0", "EMP_LOG_BATCH_SIZE must be at least 1, got '0'"),
    ("EMP_LOG_FLUSH_SECONDS", "-1", "EMP_LOG_FLUSH_SECONDS must be at least 0, got '-1'"),
    ("EMP_LOG_FLUSH_SECONDS", "nan", "EMP_LOG_FLUSH_SECONDS must be at least 0, got 'nan'"),
    ("EMP_LOG_MAX_BACKOFF_SECONDS", "-1",
     "EMP_LOG_MAX_BACKOFF_SECONDS must be above 0, got '-1'"),
    ("EMP_LOG_MAX_BACKOFF_SECONDS", "0", "EMP_LOG_MAX_BACKOFF_SECONDS must be above 0, got '0'"),
    ("EMP_LOG_DROP_REPORT_SECONDS", "soon",
     "EMP_LOG_DROP_REPORT_SECONDS must be a number, got 'soon'"),
    ("FLUENTD_PORT", "70000", "FLUENTD_PORT must be a whole number from 1 to 65535, "
                              "got '70000'"),
    ("FLUENTD_PORT", "http", "FLUENTD_PORT must be a whole number from 1 to 65535, got 'http'"),
    ("FLUENTD_SECURE", "ture", f"FLUENTD_SECURE must be {FLAG_WORDS}, got 'ture'"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variable, value, said", BAD)
def test_emp_worker_refuses_a_bad_log_shipping_setting_in_one_line(
        variable: str, value: str, said: str) -> None:
    """Tried: ``emp worker`` (Redis unreachable) with each value above, shipping off (no
    FLUENTD_HOST). Before, none was refused: the worker went on to Redis and failed
    there (exit 1, "Redis at ... does not answer"), and with a receiver set it would have shipped
    with the default (or a clamped) value. Now: exit 2, one line naming the variable,
    what it takes and the value (after click's usage lines, as for the worker's other
    settings), no traceback, before Redis."""
    done = run("worker", env={**NO_REDIS, variable: value}, timeout=45)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"Error: {said}", done.stderr
    assert "Traceback" not in done.stderr and "Redis" not in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_emp_worker_with_json_logs_and_a_receiver_refuses_before_any_traceback() -> None:
    """Tried: ``emp worker`` as the machine starts it (``EMP_LOG_FORMAT=json``) with
    ``FLUENTD_HOST`` set and ``FLUENTD_PORT=24224x``. Before, the URL was
    ``http://logs.example:24224x/emp.logs`` and the worker went on (to Redis, here).
    Now the one line, before logging is set up."""
    done = run("worker", env={**NO_REDIS, "EMP_LOG_FORMAT": "json",
                              "FLUENTD_HOST": "logs.example", "FLUENTD_PORT": "24224x"},
               timeout=45)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: FLUENTD_PORT must be a whole number from 1 to 65535, got '24224x'"), done.stderr
    assert "Traceback" not in done.stderr and "Redis" not in done.stderr, done.stderr


@pytest.mark.timeout(150)
@pytest.mark.parametrize("variable, value, said", [BAD[3], BAD[7], BAD[9]])
def test_emp_machine_refuses_a_bad_log_shipping_setting_in_one_line(
        start_machine, client: redis.Redis, variable: str, value: str,  # noqa: ANN001
        said: str) -> None:
    """Tried: ``emp machine`` (one mock GPU, a simulation worker) with each value. Before,
    the machine came up and shipped (and had its workers ship) with the value clamped
    or defaulted. Now it exits 1 before starting anything, its last line the one line
    naming the variable; no supervisord config, no machine record."""
    machine = start_machine("box-ship", EMP_MOCK_GPUS="1", **{variable: value})
    code, output = machine.refused(f"{variable}={value}")
    assert code == 1, output
    assert output.strip().splitlines()[-1] == f"Error: {said}", output
    assert "Traceback" not in output, output
    assert read_machine(client, "box-ship") is None
    assert not (Path(machine.run_dir) / "supervisord.conf").exists()


@pytest.mark.parametrize("variable, value, said", BAD)
def test_the_shipping_code_reads_them_through_the_same_checks(
        variable: str, value: str, said: str) -> None:
    """Tried: ``shipper_from_env`` (what logging setup calls) with each value and a
    receiver set. Before, it built a shipper with the default or a clamped value. Now it
    raises the same error the starts print."""
    with pytest.raises(SettingError) as raised:
        shipper_from_env({"FLUENTD_HOST": "logs.example", variable: value})
    assert str(raised.value) == said


@pytest.mark.parametrize("argument, value, said", [
    ("queue_size", 0, "EMP_LOG_QUEUE_SIZE must be at least 1, got 0"),
    ("batch_size", -5, "EMP_LOG_BATCH_SIZE must be at least 1, got -5"),
    ("max_backoff_seconds", -1.0, "EMP_LOG_MAX_BACKOFF_SECONDS must be above 0, got -1.0"),
])
def test_a_shipper_refuses_what_the_settings_refuse(argument: str, value: float,
                                                    said: str) -> None:
    """Tried: ``LogShipper(url, queue_size=0)`` and the like. Before, 0 became 1 (and a
    negative backoff was kept: a down receiver retried in a loop). Now the constructor
    checks its arguments against the settings' table."""
    with pytest.raises(SettingError, match=f"^{said}$"):
        LogShipper("http://127.0.0.1:1/emp.logs", **{argument: value})


def test_good_values_still_make_the_url_and_the_shipper() -> None:
    """The accepted values: a port in range, an on/off word, sizes from 1, 0 s flush."""
    environ = {"FLUENTD_HOST": "agg", "FLUENTD_PORT": "65535", "FLUENTD_SECURE": " Yes ",
               "EMP_LOG_QUEUE_SIZE": "1", "EMP_LOG_BATCH_SIZE": "1",
               "EMP_LOG_FLUSH_SECONDS": "0", "EMP_LOG_MAX_BACKOFF_SECONDS": "0.1",
               "EMP_LOG_DROP_REPORT_SECONDS": "0"}
    assert shipping_url(environ) == "https://agg:65535/emp.logs"
    shipper = shipper_from_env(environ)
    try:
        assert (shipper.queue_size, shipper.batch_size, shipper.max_backoff_seconds) == (
            1, 1, 0.1)
    finally:
        shipper.close()
