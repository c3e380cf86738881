"""``emp monitor``'s Flower options: its own defaults, and Flower's ways to change them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import sys; from webapp.monitor import flower_options; "
         "o = flower_options(sys.argv[1:], None, None); print(o.max_tasks, o.port)")


def options_of(*argv: str, **env: str) -> tuple[int, int]:
    """Options as a fresh process parses them (Flower's options are process globals)."""
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60, check=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.parametrize("argv, env, expected", [
    ((), {}, (2_000, 3333)),  # not Flower's 100,000 (700 MB) nor Celery's 10,000 (70 MB)
    (("--max_tasks=500",), {}, (500, 3333)),
    ((), {"FLOWER_MAX_TASKS": "2000", "FLOWER_PORT": "4444"}, (2000, 4444)),
])
def test_the_task_history_kept_in_memory_is_bounded_by_default(argv, env, expected) -> None:
    """Tried: no options, --max_tasks on the command line, FLOWER_* variables."""
    assert options_of(*argv, **env) == expected


@pytest.mark.parametrize("argv, env, words", [
    (("--basic_auth=admin",), {}, "--basic_auth (or FLOWER_BASIC_AUTH): 'admin' is not "
                                  "user:password"),
    (("--basic_auth=ops:s3cret,:nouser",), {}, "':nouser' is not user:password"),
    ((), {"FLOWER_BASIC_AUTH": "ops"}, "'ops' is not user:password"),
    (("--max_tasks=-5",), {}, "--max_tasks (or FLOWER_MAX_TASKS) must be at least 0, got -5"),
])
def test_a_flower_option_flower_cannot_use_stops_the_start(argv, env, words) -> None:
    """Tried: ``--basic_auth=admin`` (no password), a second entry without a user, the
    same through FLOWER_BASIC_AUTH, and ``--max_tasks=-5``. Before, the monitor started;
    with such a login it refused everyone, its operator included (Flower compares the
    decoded ``user:password`` with each entry). Now the start stops naming the option."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60)
    assert done.returncode != 0 and words in done.stderr, done.stderr
    assert "MonitorOptionError" in done.stderr  # emp monitor turns it into a usage error


@pytest.mark.timeout(120)
def test_the_no_authentication_warning_says_what_is_open(start_server) -> None:  # noqa: ANN001
    """Tried: `emp monitor` with no options, then with --read_only (FLOWER_READ_ONLY), each
    read at /health, its start-up log read. Before: the read-only one warned "anyone who
    can reach port N can cancel, retry and submit jobs ... or --read_only", which it was,
    and refused all of them (403). Now it says what it leaves open: reading every job."""
    plain = start_server("monitor")
    read_only = start_server("monitor", FLOWER_READ_ONLY="true")
    warning = [line for line in plain.log().splitlines() if "NO MONITOR AUTHENTICATION" in line]
    assert len(warning) == 1 and "can cancel, retry and submit jobs" in warning[0]
    assert "or --read_only" in warning[0]
    warning = [line for line in read_only.log().splitlines()
               if "NO MONITOR AUTHENTICATION" in line]
    assert len(warning) == 1, read_only.log()
    assert "can read every job's payload, result and error" in warning[0]
    assert "cancel" not in warning[0].replace("refuses the actions", "")
    assert "or --read_only" not in warning[0]
