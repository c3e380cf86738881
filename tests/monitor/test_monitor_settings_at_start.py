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
