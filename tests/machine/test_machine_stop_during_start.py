"""A machine asked to stop while its supervisord is still starting stops cleanly.

``emp machine`` forks supervisord into a session of its own, but between the fork and
``setsid`` the child is still in the machine's process group with default signal
handlers: a SIGTERM sent to the group then (a deploy stopping a machine that just
started, Ctrl-C) kills the half-started supervisord too. The machine must read that
as the stop it was asked for, not as a failed start.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import ROOT
from emp_tasks.local_redis import free_port

#: Imported by every Python the machine starts (PYTHONPATH comes first): supervisord
#: waits for the test's go, then dies of SIGTERM, as the half-started child does.
SITECUSTOMIZE = """
import os, signal, sys, time
from pathlib import Path
if "supervisor.supervisord" in sys.orig_argv:
    go = Path({go!r})
    while not go.exists():
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.timeout(60)
def test_a_stop_while_supervisord_starts_is_a_clean_stop(start_machine, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: the machine's process group sent SIGTERM while supervisord was starting,
    then supervisord killed by SIGTERM before it answered (what the group's signal does
    to a child not yet in its own session). Before: the machine exited 1 saying
    "supervisord exited with -15", a failed start. Now it exits 0, says it stopped
    during its start, and leaves no process behind."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    go = tmp_path / "go"
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE.format(go=str(go)))
    machine = start_machine("box-s", url=f"redis://127.0.0.1:{free_port()}/0",
                            EMP_MOCK_GPUS="1", PYTHONPATH=f"{hooks}{os.pathsep}{ROOT}")
    machine.wait_up()  # the health server answers before supervisord is started
    os.killpg(machine.process.pid, signal.SIGTERM)
    go.touch()
    code = machine.process.wait(timeout=40)
    output = machine.tail()
    assert code == 0, output
    assert "stopped during its start" in output, output
    assert "supervisord exited" not in output, output
    assert machine.leftovers() == []
