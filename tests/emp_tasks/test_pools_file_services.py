"""A pools file naming a service no job type has (a typo) is warned of, naming the file,
the name and the known services; it is not refused (a project may register its own
job types, which the loader cannot see)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from capability_router.pools import DEFAULT_POOLS_FILE, POOLS_FILE_ENV
from conftest import wait_for
from emp_tasks.producer import submit

pytestmark = pytest.mark.timeout(120)


def _typo_file(tmp_path: Path) -> Path:
    text = DEFAULT_POOLS_FILE.read_text().replace(
        'services = ["simulation", "echo", "text"]', 'services = ["simulaton", "echo", "text"]',
        1) + "\n[priors.services.ecko]\nseconds_per_unit = 1.0\n"
    path = tmp_path / "pools.toml"
    path.write_text(text)
    return path


def test_routing_warns_once_of_services_no_job_type_has(
        app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Tried: a copy of conf/pools.toml with ``"simulaton"`` in fast's services and a
    ``[priors.services.ecko]``, then a submit routed by it. Before, nothing was said:
    fast never got a simulation job and the prior was never used, silently. Now the
    router says so once (one line: the file, the unknown names, the known services);
    the job is still filed."""
    path = _typo_file(tmp_path)
    monkeypatch.setenv(POOLS_FILE_ENV, str(path))
    with caplog.at_level(logging.WARNING):
        assert submit("echo", {}, app=app).id
        assert submit("echo", {}, app=app).id
    lines = [r.getMessage() for r in caplog.records if "simulaton" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert str(path) in lines[0] and "ecko" in lines[0] and "comfyui" in lines[0], lines[0]


def test_emp_worker_warns_of_services_no_job_type_has(
        start_worker: Any, tmp_path: Path) -> None:
    """Tried: ``emp worker`` with EMP_POOLS_FILE naming that file. Before, it started
    saying nothing of the typo; now its start says the line above, and it still starts."""
    path = _typo_file(tmp_path)
    worker = start_worker("typo-w", wait=False, EMP_POOLS_FILE=str(path),
                          WORKER_POOLS="standard").wait_ready("standard")
    wait_for(lambda: "simulaton" in worker.log_path.read_text(), timeout=10)
    line = next(x for x in worker.log_path.read_text().splitlines() if "simulaton" in x)
    assert str(path) in line and "ecko" in line and "known" in line, line
