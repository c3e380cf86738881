"""``emp submit`` reports an error that is not about its command line (the pools file,
the router) as one ``Error:`` line, without click's usage header."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(120)


def _submit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emp_tasks.cli", "submit", *args,
                           "--no-wait"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_a_broken_pools_file_or_an_unroutable_job_is_an_error_not_a_usage_error(
        redis_server, client, tmp_path: Path) -> None:
    """Tried: ``emp submit echo`` with EMP_POOLS_FILE naming a file that is not TOML, one
    with a bad field, and a good file none of whose pools serves ``echo``. Before, each
    printed "Usage: python -m emp_tasks.cli submit [OPTIONS] SERVICE / Try '... --help'
    for help." above the error and exited 2, as if the command line were wrong. Now one
    ``Error:`` line (naming the file or the pools), exit 1, nothing written to Redis;
    a bad ``--payload`` size is still a usage error (exit 2)."""
    good = (ROOT / "conf" / "pools.toml").read_text()
    broken = tmp_path / "broken.toml"
    broken.write_text("[pools.fast\n")
    bad_field = tmp_path / "bad_field.toml"
    bad_field.write_text(good.replace("gpu = true", "gpu = 1", 1))
    no_echo = tmp_path / "no_echo.toml"
    no_echo.write_text(good.replace('"echo", ', ""))
    url = {"EMP_REDIS_URL": str(redis_server.url)}
    before = sorted(client.keys("*"))
    for path, says in ((broken, str(broken)), (bad_field, "gpu"),
                       (no_echo, "no pool can run this job")):
        done = _submit({**url, "EMP_POOLS_FILE": str(path)}, "echo")
        assert done.returncode == 1, (path, done.stdout, done.stderr)
        assert "Usage:" not in done.stderr and "--help" not in done.stderr, done.stderr
        assert done.stderr.startswith("Error: ") and says in done.stderr, done.stderr
    usage = _submit(url, "simulation", "--payload", '{"steps": -20}')
    assert usage.returncode == 2 and "payload.steps" in usage.stderr, usage.stderr
    assert sorted(client.keys("*")) == before
