"""How often each supervised program's process was started again, counted by the machine.

supervisor reports a program's current pid and state, not how many processes it
has had. Every read of its process list (the reporter's poll, ``/status``,
``/ready``) goes through ``observe``: a program whose pid is another than the one
last seen, after it had one, was started again (crashed and respawned, revived
from FATAL, restarted on request). A process that lived and died between two
reads (under ``EMP_MACHINE_POLL_SECONDS``) can be missed; the count is of
processes seen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any


class RestartCounter:
    """Restarts per program since the machine started (monotonic: a Prometheus counter)."""

    def __init__(self, programs: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._pids: dict[str, int] = {}
        self._restarts = dict.fromkeys(programs, 0)

    def observe(self, infos: Mapping[str, Mapping[str, Any]]) -> None:
        """Count the programs of ``infos`` (supervisor's process info by name) whose pid is new."""
        with self._lock:
            for name, info in infos.items():
                pid = int(info.get("pid") or 0)
                if not pid or name not in self._restarts:
                    continue  # no process now (EXITED, BACKOFF...): the next pid tells
                last = self._pids.get(name)
                if last is not None and last != pid:
                    self._restarts[name] += 1
                self._pids[name] = pid

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._restarts)
