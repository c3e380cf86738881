"""Unexpected exits of the machine's programs, as supervisord tells them.

supervisord writes one line per exit it did not expect ("exited: simulation-0
(terminated by SIGKILL; not expected)"), also for a process that lived and died
between two polls of its process list. ``OutputCopy`` hands each line of its
output to ``ExitLog.feed``; the reporter takes the exits (``take``) to say them
and to hand a dead worker's jobs back, and ``/ready`` asks how often a program
exited lately (``recent``): a worker that dies after its start period is never
FATAL, and without this the machine said nothing while it crash-looped.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

#: supervisord's line for an exit it did not expect (its ``process.finish``), after its
#: local time stamp ("2026-12-03 16:24:38,870 WARN ").
EXIT_LINE = re.compile(r"^(?:(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) )?"
                       r".*\bexited: (?P<name>\S+) \((?P<how>.+); not expected\)\s*$")
#: How far back ``recent`` looks, seconds.
WINDOW_SECONDS = 300.0
#: Exits kept per program for ``recent``, at most.
KEPT = 100


@dataclass(frozen=True)
class Exit:
    """One unexpected exit: the program, how it ended ("terminated by SIGKILL",
    "exit status 1"), when it was seen (``at``, monotonic seconds) and the epoch time
    it was read (``wall``: supervisord's output is followed live, so after the process
    died and before the next one could claim, which takes its start, registration and
    a first ask). Not the line's stamp: that is supervisord's local time, hours off
    when its time zone is not the machine's, an hour across a DST change."""

    program: str
    how: str
    at: float
    wall: float


class ExitLog:
    """Exits of known programs, waiting to be taken and kept for ``recent``."""

    def __init__(self, programs: Iterable[str], window_seconds: float = WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._new: deque[Exit] = deque(maxlen=KEPT)
        self._seen: dict[str, deque[Exit]] = {name: deque(maxlen=KEPT) for name in programs}

    def feed(self, line: bytes | str) -> Exit | None:
        """Note ``line`` of supervisord's output if it tells an unexpected exit."""
        text = line.decode(errors="replace") if isinstance(line, bytes) else line
        if "not expected" not in text:
            return None
        match = EXIT_LINE.search(text)
        if match is None or match["name"] not in self._seen:
            return None
        found = Exit(match["name"], match["how"], time.monotonic(), time.time())
        with self._lock:
            self._new.append(found)
            self._seen[found.program].append(found)
        return found

    def take(self) -> list[Exit]:
        """The exits fed since the last call, oldest first."""
        with self._lock:
            taken = list(self._new)
            self._new.clear()
        return taken

    def recent(self, program: str) -> list[Exit]:
        """``program``'s exits within the last ``window_seconds``, oldest first."""
        since = time.monotonic() - self.window_seconds
        with self._lock:
            return [e for e in self._seen.get(program, ()) if e.at >= since]

