"""The processes an ``emp up`` started, kept in its data folder while they run.

An ``emp up`` that dies without stopping its stack (killed, or before SIGHUP was
handled: a closed terminal) left its Redis and workers running. The next ``emp
up`` on that folder found port 6390 taken and started a second Redis on another
port over the first one's append-only files, beside workers still serving the
first. It now reads this record first and refuses, naming what still runs and
how to stop it. A pid is taken as still ours only while its command line is
still the one started (a reused pid is not).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from capability_router.errors import EmpError
from emp_tasks.stack_state import pid_alive

FILE_NAME = "emp-up-pids.json"


def _command_line(pid: int) -> str | None:
    """``pid``'s command line; None once it is gone or a zombie (whose is empty), "" where
    /proc cannot say (not Linux: then a live pid is taken as ours)."""
    if not Path("/proc/self").exists():
        return ""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def _still_ours(pid: int, marker: str) -> bool:
    if not pid_alive(pid):
        return False
    line = _command_line(pid)
    return line is not None and (line == "" or marker in line)


class StackPids:
    """The record of one ``emp up``'s processes in ``data_dir``: name -> (pid, a word of
    its command line, e.g. "emp_tasks.cli" or the server binary's name)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self.processes: dict[str, tuple[int, str]] = {}

    def left_running(self) -> dict[str, int]:
        """What an earlier ``emp up`` on this folder started and is still running."""
        try:
            recorded = json.loads(self.path.read_text())["processes"]
            entries = {str(name): (int(pid), str(marker))
                       for name, (pid, marker) in recorded.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # unreadable: nothing can be said of it
        return {name: pid for name, (pid, marker) in entries.items()
                if _still_ours(pid, marker)}

    def refuse_if_left_running(self) -> None:
        """EmpError naming what an earlier ``emp up`` on this folder still runs, if anything
        (itself too, when it runs on: one with another XDG_STATE_HOME is not in the record
        of ``stack_state``)."""
        left = self.left_running()
        if left:
            listed = ", ".join(f"{name} (pid {pid})" for name, pid in left.items())
            raise EmpError(
                f"{self.path.parent} is in use by an earlier emp up, still running or left "
                f"running: {listed}; a second Redis over the same files would corrupt them. "
                f"Stop them (`kill {' '.join(str(pid) for pid in left.values())}`; Ctrl-C "
                "where that emp up runs), or give this one another --data-dir")

    def add(self, name: str, pid: int, marker: str) -> None:
        """Record process ``name`` (written at once: a kill may come at any time)."""
        if not self.processes:
            self.processes["emp up"] = (os.getpid(), "emp")
        self.processes[name] = (pid, marker)
        temporary = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
        temporary.write_text(json.dumps({"processes": self.processes}) + "\n")
        os.replace(temporary, self.path)

    def clear(self) -> None:
        """Every recorded process has stopped: forget them."""
        self.path.unlink(missing_ok=True)
