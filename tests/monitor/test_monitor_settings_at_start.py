"""The monitor reads its live-stream backlog at start, so a bad one stops it there."""

from __future__ import annotations

import pytest

from tests.emp_tasks.test_cli import run


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_bad_sse_backlog_stops_the_monitor_at_start_naming_it(value: str) -> None:
    """Tried: ``EMP_SSE_BACKLOG=abc emp monitor``, then opening the live events stream.
    Before, the monitor started; the stream's first request logged a traceback ending
    "EMP_SSE_BACKLOG must be an integer, got 'abc'" (and so would every one), and 0 or
    -5 silently became 1 (a stream dropped at its second unwritten message). Now the
    start stops with one line naming it."""
    done = run("monitor", "--port", "1",
               env={"EMP_REDIS_URL": "redis://127.0.0.1:1/0", "EMP_SSE_BACKLOG": value},
               timeout=20)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: EMP_SSE_BACKLOG must be "), \
        done.stderr


@pytest.mark.parametrize("name, value", [("FLOWER_READ_ONLY", "maybe"),
                                         ("FLOWER_MAX_TASKS", "lots")])
def test_a_flower_variable_flower_cannot_read_stops_the_monitor_naming_it(
        name: str, value: str) -> None:
    """Tried: ``FLOWER_READ_ONLY=maybe emp monitor``. Before, it stopped with a traceback
    of Flower's own ending "ValueError: invalid truth value 'maybe'", naming neither the
    variable nor what it accepts (``FLOWER_MAX_TASKS=lots``: "invalid literal for int()").
    Now one line names the variable, and for a flag the words it accepts."""
    done = run("monitor", "--port", "1",
               env={"EMP_REDIS_URL": "redis://127.0.0.1:1/0", name: value}, timeout=20)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {name} must be "), done.stderr
    assert repr(value) in last, done.stderr
    if name == "FLOWER_READ_ONLY":
        assert "true" in last and "false" in last, done.stderr


def test_a_flag_that_is_neither_on_nor_off_stops_the_monitor_naming_it() -> None:
    """Tried: ``EMP_METRICS_PUBLIC=ture emp monitor`` with --basic_auth. Before, the
    monitor started (the test timed out after 20 s with it serving), the misspelt word
    silently off: ``/metrics`` behind the password. Now the start stops with one line
    naming it."""
    done = run("monitor", "--port", "1", "--basic_auth=a:b",
               env={"EMP_REDIS_URL": "redis://127.0.0.1:1/0", "EMP_METRICS_PUBLIC": "ture"},
               timeout=20)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "Error: EMP_METRICS_PUBLIC must be one of "), done.stderr
