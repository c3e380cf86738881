"""Counters of a machine's worker processes (jobs run, model downloads), summed by the machine.

The jobs and downloads happen in the workers (and their pool processes); the
figures are read by ``emp machine`` (``/status``, ``/metrics``), another process.
Each process keeps its counts in ``<EMP_MACHINE_COUNTERS_DIR>/<pid>.json``,
rewritten at each change (a job's end, a download: rare next to the write);
the machine sums the files when asked. A file outlives its process, so a worker
killed and started again keeps the counts it had: counters never go back while
the machine runs (the machine clears the folder when it starts). A process
given the pid of a dead one continues its file. Outside a machine (the variable
unset) nothing is counted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV = "EMP_MACHINE_COUNTERS_DIR"
#: Outcomes of a job a connector ran.
JOB_OUTCOMES = ("completed", "failed", "cancelled")
#: A download's figures: finished ones, failed ones, bytes fetched, seconds spent.
DOWNLOAD_FIELDS = ("completed", "failed", "bytes", "seconds")

_lock = threading.Lock()
_counts: dict[str, Any] | None = None
_pid: int | None = None


def _empty() -> dict[str, Any]:
    return {"jobs": {}, "downloads": dict.fromkeys(DOWNLOAD_FIELDS, 0)}


def _file(directory: str | os.PathLike[str], pid: int) -> Path:
    return Path(directory) / f"{pid}.json"


def _load(directory: str) -> dict[str, Any]:
    """This pid's counts so far: a fork starts from none, a reused pid from the file."""
    try:
        return _merge(_empty(), json.loads(_file(directory, os.getpid()).read_text()))
    except (OSError, ValueError):
        return _empty()


def _update(change: Any) -> None:  # noqa: ANN401 - a function of the counts dict
    global _counts, _pid
    directory = os.environ.get(ENV)
    if not directory:
        return
    with _lock:
        if _counts is None or _pid != os.getpid():  # the pool's forks count on their own
            _counts, _pid = _load(directory), os.getpid()
        change(_counts)
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            path = _file(directory, _pid)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(_counts))
            temporary.replace(path)  # readers never see half a file
        except OSError as exc:  # a full disk must not fail the job that was counted
            logger.warning("machine counters not written to %s: %s", directory, exc)


def count_job(program: str, outcome: str) -> None:
    """Count a job that ``program`` (the connector id: the machine's program name) ran."""
    def change(counts: dict[str, Any]) -> None:
        jobs = counts["jobs"].setdefault(program, dict.fromkeys(JOB_OUTCOMES, 0))
        jobs[outcome] = jobs.get(outcome, 0) + 1
    _update(change)


def count_download(ok: bool, fetched_bytes: int, seconds: float) -> None:
    """Count one model download run by this process, finished (``ok``) or failed."""
    def change(counts: dict[str, Any]) -> None:
        downloads = counts["downloads"]
        downloads["completed" if ok else "failed"] += 1
        downloads["bytes"] += max(0, int(fetched_bytes))
        downloads["seconds"] += max(0.0, float(seconds))
    _update(change)


def _merge(total: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    for program, jobs in (counts.get("jobs") or {}).items():
        into = total["jobs"].setdefault(program, dict.fromkeys(JOB_OUTCOMES, 0))
        for outcome in JOB_OUTCOMES:
            into[outcome] += int((jobs or {}).get(outcome) or 0)
    for name in DOWNLOAD_FIELDS:
        total["downloads"][name] += (counts.get("downloads") or {}).get(name) or 0
    return total


def read_counters(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The counts of every process that kept them in ``directory``, summed."""
    total = _empty()
    for path in Path(directory).glob("*.json"):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # removed meanwhile, or not ours
        if isinstance(counts, dict):
            _merge(total, counts)
    return total
