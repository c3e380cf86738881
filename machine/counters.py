"""Counters of a machine's worker processes (jobs run, model downloads), summed by the machine.

The jobs and downloads happen in the workers (and their pool processes); the
figures are read by ``emp machine`` (``/status``, ``/metrics``), another process.
So they are prometheus_client Counters in its multiprocess mode: the machine
gives its workers ``PROMETHEUS_MULTIPROC_DIR`` (``counters_dir``), each
process keeps its values in an mmap'd file there named by its pid (a count is
a memory write, no file rewritten on the job's path), and the machine sums the
files with ``MultiProcessCollector``. A file outlives its process, so a worker
killed and started again keeps the counts it had: counters never go back while
the machine runs (the machine clears the folder when it starts); a process
given the pid of a dead one continues its file. Outside a machine (the
variable unset) nothing is counted and nothing written.

prometheus_client picks its value store once, when first imported; these
Counters write to the directory whatever it picked (a process may set the
variable later, as tests do), and they are in no registry. prometheus_client
is imported at the first count: a worker outside a machine does not load it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: prometheus_client's multiprocess directory, set by the machine for its workers.
ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Outcomes of a job a connector ran.
JOB_OUTCOMES = ("completed", "failed", "cancelled")
#: A download's figures: finished ones, failed ones, bytes fetched, seconds spent.
DOWNLOAD_FIELDS = ("completed", "failed", "bytes", "seconds")

#: A memory file system for the counters, where there is one (Linux).
MEMORY_FS = Path("/dev/shm")

JOBS = "emp_machine_jobs"
DOWNLOADS = "emp_machine_model_downloads"
DOWNLOAD_BYTES = "emp_machine_model_download_bytes"
DOWNLOAD_SECONDS = "emp_machine_model_download_seconds"


class _Counters:
    """This process's Counters, their values in mmap'd files of ``directory``."""

    def __init__(self, directory: str) -> None:
        from prometheus_client import Counter, values

        self.directory = directory
        Path(directory).mkdir(parents=True, exist_ok=True)
        store = values.MultiProcessValue()  # per-pid files; a fork starts its own

        class FileCounter(Counter):
            def _metric_init(self) -> None:
                self._value = store(self._type, self._name, self._name + "_total",
                                    self._labelnames, self._labelvalues, self._documentation)
                self._created = time.time()

        self.jobs = FileCounter(JOBS, "Job attempts the worker ran, by outcome.",
                                ("program", "outcome"), registry=None)
        self.downloads = FileCounter(DOWNLOADS, "Model downloads run on the machine, by "
                                     "outcome.", ("outcome",), registry=None)
        self.bytes = FileCounter(DOWNLOAD_BYTES, "Bytes model downloads fetched.",
                                 registry=None)
        self.seconds = FileCounter(DOWNLOAD_SECONDS, "Seconds spent in model downloads.",
                                   registry=None)


_lock = threading.Lock()
_counters: _Counters | None = None


def _mine() -> _Counters | None:
    """The Counters of this process's directory; None outside a machine."""
    global _counters
    directory = os.environ.get(ENV)
    if not directory:
        return None
    with _lock:
        if _counters is None or _counters.directory != directory:
            _counters = _Counters(directory)
        return _counters


def count_job(program: str, outcome: str) -> None:
    """Count a job that ``program`` (the connector id: the machine's program name) ran."""
    try:
        if (counters := _mine()) is not None:
            counters.jobs.labels(program, outcome).inc()
    except OSError as exc:  # a full disk must not fail the job that was counted
        logger.warning("machine counters not written to %s: %s", os.environ.get(ENV), exc)


def count_download(ok: bool, fetched_bytes: int, seconds: float) -> None:
    """Count one model download run by this process, finished (``ok``) or failed."""
    try:
        if (counters := _mine()) is not None:
            counters.downloads.labels("completed" if ok else "failed").inc()
            counters.bytes.inc(max(0, int(fetched_bytes)))
            counters.seconds.inc(max(0.0, float(seconds)))
    except OSError as exc:
        logger.warning("machine counters not written to %s: %s", os.environ.get(ENV), exc)


def _empty() -> dict[str, Any]:
    return {"jobs": {}, "downloads": dict.fromkeys(DOWNLOAD_FIELDS, 0)}


def read_counters(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The counts of every process that kept them in ``directory``, summed."""
    from prometheus_client.multiprocess import MultiProcessCollector

    total = _empty()
    if not Path(directory).is_dir():
        return total
    try:
        families = list(MultiProcessCollector(None, path=str(directory)).collect())
    except (OSError, RuntimeError, ValueError) as exc:  # a file removed or cut short
        logger.warning("machine counters in %s not read: %s", directory, exc)
        return total
    downloads = total["downloads"]
    for family in families:
        for sample in family.samples:
            if family.name == JOBS and sample.labels.get("outcome") in JOB_OUTCOMES:
                jobs = total["jobs"].setdefault(sample.labels.get("program", ""),
                                                dict.fromkeys(JOB_OUTCOMES, 0))
                jobs[sample.labels["outcome"]] += int(sample.value)
            elif family.name == DOWNLOADS and sample.labels.get("outcome") in downloads:
                downloads[sample.labels["outcome"]] += int(sample.value)
            elif family.name == DOWNLOAD_BYTES:
                downloads["bytes"] += int(sample.value)
            elif family.name == DOWNLOAD_SECONDS:
                downloads["seconds"] += sample.value
    return total


def counters_dir(run_dir: Path) -> Path:
    """Where a machine's workers keep their counters: on a memory file system
    (``/dev/shm``, as prometheus_client advises), one folder per run directory.

    Not the run directory: the mmap'd files are sparse, and a write into a page
    the disk cannot give (the run directory's disk full of models and logs) kills
    the process with SIGBUS instead of raising an error it could log. Without a
    writable ``/dev/shm``, the system's temporary folder."""
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    base = MEMORY_FS if MEMORY_FS.is_dir() and os.access(MEMORY_FS, os.W_OK) \
        else Path(tempfile.gettempdir())
    return base / f"emp-machine-counters-{digest}"
