"""Ship log lines to Fluent Bit (or Fluentd) over HTTP in batches, never blocking a caller.

``LogShipper`` is a logging handler: ``emit`` formats the record and puts
the line on a bounded queue, or, when the queue is full, drops it and counts
the drop; it never waits. A background thread POSTs batches as a JSON array
(the body Fluent Bit's ``http`` input and Fluentd's ``in_http`` accept; the
tag is the URL path). While the receiver is down the thread keeps the batch
and retries with exponential backoff; lines logged meanwhile wait in the
queue. A 4xx answer other than 408/429 would fail forever, so that batch is
counted as rejected and dropped. Every ``drop_report_seconds`` with new
drops, the thread logs a ``log_drops`` warning (shipped too), and it keeps
its counters in ``<EMP_LOG_STATS_DIR>/<pid>.json`` so ``emp machine`` can
report drops of all its processes on ``/status``.

A process forked after setup (Celery's pool) starts its own queue and
thread on its first line; lines still queued in the parent stay the
parent's. At exit the thread gets ``close_timeout`` seconds to send the rest.

Environment (defaults in brackets):

- ``FLUENT_BIT_URL`` [unset]: e.g. ``http://127.0.0.1:9880/emp.logs``; else
- ``FLUENTD_HOST`` / ``FLUENTD_PORT`` [8888; a whole number from 1 to 65535] /
  ``FLUENTD_SECURE`` [false; on/off words]: the original's variables; the URL is
  ``http(s)://<host>:<port>/<EMP_LOG_TAG>`` with ``EMP_LOG_TAG`` [``emp.logs``; no
  ``#``, ``?`` or spaces]. Not used, so not read, when ``FLUENT_BIT_URL`` is set.
- ``EMP_LOG_QUEUE_SIZE`` [10000] lines, ``EMP_LOG_BATCH_SIZE`` [500] lines (whole
  numbers, at least 1), ``EMP_LOG_FLUSH_SECONDS`` [0; at least 0]: how long a line
  may wait for others to join its batch. At 0 a line goes as soon as the thread
  is free and batches form from the lines logged while a POST is in flight or the
  receiver is down: a process killed outright (a pool process in a group SIGTERM)
  loses only what it logged during its last POST.
- ``EMP_LOG_MAX_BACKOFF_SECONDS`` [30; above 0: at 0 a down receiver is retried
  without a pause], ``EMP_LOG_DROP_REPORT_SECONDS`` [60; at least 0],
  ``EMP_LOG_STATS_DIR`` [unset].

``shipping_settings`` reads them all, and is what decides what is valid: a
malformed number, or one out of its range, raises SettingError naming the
variable and what it takes (``LogShipper`` checks its arguments against the same
table). ``emp machine`` and ``emp worker`` read them at their start, shipping on or
not, so a bad one stops them in one line instead of becoming its default.
``EMP_LOG_STATS_DIR`` is not checked: ``emp machine`` sets it for its processes (a folder
of its own) and elsewhere one that cannot be written loses only the counters.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from capability_router.env import SettingError, check_at_least, env, env_at_least, flag_value
from capability_router.redaction import masked_url

logger = logging.getLogger("emp.logs")

#: Defaults (see the module docstring).
QUEUE_SIZE = 10_000
BATCH_SIZE = 500
FLUSH_SECONDS = 0.0
MAX_BACKOFF_SECONDS = 30.0
FIRST_BACKOFF_SECONDS = 0.5
DROP_REPORT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2.0
DEFAULT_TAG = "emp.logs"
FLUENTD_PORT = 8888

#: The numbers shipping takes, by ``LogShipper`` argument: (variable, default, lowest,
#: int or float, above the lowest rather than at least it). The one place that says
#: what each may be: the environment's values (``shipping_settings``) and the
#: constructor's arguments are both checked against it.
NUMBERS: dict[str, tuple[str, float, float, type, bool]] = {
    "queue_size": ("EMP_LOG_QUEUE_SIZE", QUEUE_SIZE, 1, int, False),
    "batch_size": ("EMP_LOG_BATCH_SIZE", BATCH_SIZE, 1, int, False),
    "flush_seconds": ("EMP_LOG_FLUSH_SECONDS", FLUSH_SECONDS, 0, float, False),
    # At 0 the backoff doubles from 0.5 s to at most 0: a down receiver retried in a loop.
    "max_backoff_seconds": ("EMP_LOG_MAX_BACKOFF_SECONDS", MAX_BACKOFF_SECONDS, 0, float, True),
    "drop_report_seconds": ("EMP_LOG_DROP_REPORT_SECONDS", DROP_REPORT_SECONDS, 0, float, False),
}
#: What ``FLUENTD_PORT`` takes, as its error says.
PORT_WORDS = "a whole number from 1 to 65535"
#: What ``EMP_LOG_TAG`` takes, as its error says.
TAG_WORDS = "a tag without '#', '?' or spaces"


def without_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: the stats reach ``/status``,
    which anyone may read, and the shipping URL may carry the log endpoint's credentials."""
    return masked_url(url)


class LogShipper(logging.Handler):
    """A logging handler that ships formatted lines in batches from a bounded queue.

    :param url: where batches are POSTed (JSON array of records).
    :param queue_size: lines held while the receiver is slow or down; more are dropped.
    :param batch_size: most lines per POST.
    :param flush_seconds: longest a line waits for others to join its batch (0: none).
    :param max_backoff_seconds: longest wait between retries of a failed POST.
    :param drop_report_seconds: least time between two ``log_drops`` warnings.
    :param stats_dir: where the counters are kept as ``<pid>.json`` (None: nowhere).
    """

    def __init__(self, url: str, queue_size: int = QUEUE_SIZE, batch_size: int = BATCH_SIZE,
                 flush_seconds: float = FLUSH_SECONDS,
                 max_backoff_seconds: float = MAX_BACKOFF_SECONDS,
                 drop_report_seconds: float = DROP_REPORT_SECONDS,
                 stats_dir: str | os.PathLike[str] | None = None,
                 close_timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        super().__init__()
        for argument, value in (("queue_size", queue_size), ("batch_size", batch_size),
                                ("flush_seconds", flush_seconds),
                                ("max_backoff_seconds", max_backoff_seconds),
                                ("drop_report_seconds", drop_report_seconds)):
            variable, _default, lowest, _kind, above = NUMBERS[argument]
            check_at_least(variable, value, lowest, above=above)
        self.url = url
        self.queue_size, self.batch_size = queue_size, batch_size
        self.flush_seconds, self.max_backoff_seconds = flush_seconds, max_backoff_seconds
        self.drop_report_seconds = drop_report_seconds
        self.stats_dir = Path(stats_dir) if stats_dir else None
        self.close_timeout = close_timeout
        self._pid = -1
        self._closing = False
        atexit.register(self.close)

    # -- per-process state, made on the first line (again after a fork) ---------

    def _start(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[str] = queue.Queue(self.queue_size)
        self._counts = {"shipped": 0, "dropped": 0, "rejected": 0, "failures": 0}
        self._counts_lock = threading.Lock()
        #: Lines queued and not yet sent or rejected (what ``flush`` waits for).
        self._unsent = 0
        self._reported_drops = 0
        self._last_error: str | None = None
        self._pending: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emp-log-shipper", daemon=True)
        self._thread.start()

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():
            with _start_lock:
                if self._pid != os.getpid():
                    self._start()

    # -- logging side -------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted line; drop and count it when the queue is full."""
        if self._closing:
            return
        self._ensure_started()
        if threading.current_thread() is self._thread and record.name != logger.name:
            return  # the shipper's own HTTP client logging: shipping it would loop
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._counts_lock:
            try:
                self._queue.put_nowait(line)
                self._unsent += 1
            except queue.Full:
                self._counts["dropped"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters of this process: shipped, dropped, rejected, failures, queued."""
        self._ensure_started()
        with self._counts_lock:
            counts = dict(self._counts)
        return {**counts, "queued": self._queue.qsize() + len(self._pending),
                "last_error": self._last_error, "url": without_password(self.url),
                "pid": self._pid}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued line is sent (or ``timeout``); True when none is left."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            with self._counts_lock:
                if not self._unsent:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Send what is left within ``close_timeout``, then stop the thread."""
        if self._closing:
            return
        if self._pid == os.getpid():
            self.flush()
            self._closing = True
            self._stop.set()
            self._thread.join(timeout=self.close_timeout)
            self._write_stats()
        self._closing = True
        super().close()

    # -- shipping thread ------------------------------------------------------------

    def _run(self) -> None:
        session = requests.Session()
        backoff = FIRST_BACKOFF_SECONDS
        last_report = time.monotonic()
        written: dict[str, int] = {}
        while not self._stop.is_set():
            if not self._pending:
                self._pending = self._next_batch()
            if self._pending:
                if self._send(session, self._pending):
                    self._pending = []
                    backoff = FIRST_BACKOFF_SECONDS
                else:
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_seconds)
            if time.monotonic() - last_report >= self.drop_report_seconds:
                last_report = time.monotonic()
                self._report_drops()
            with self._counts_lock:
                counts = dict(self._counts)
            if counts != written:  # at most once per send, retry or idle wait
                self._write_stats()
                written = counts
        session.close()

    def _next_batch(self) -> list[str]:
        """Up to ``batch_size`` lines: waits for the first, then up to ``flush_seconds``."""
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0
                             else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, session: requests.Session, batch: list[str]) -> bool:
        """POST one batch; True when it is done with (sent, or rejected for good)."""
        body = "[" + ",".join(batch) + "]"
        try:
            response = session.post(self.url, data=body.encode(), timeout=REQUEST_TIMEOUT_SECONDS,
                                    headers={"Content-Type": "application/json"})
        except requests.RequestException as exc:
            return self._failed(f"{type(exc).__name__}: {exc}")
        if response.status_code < 300:
            self._count("shipped", len(batch))
            return True
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            self._count("rejected", len(batch))
            self._last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            return True
        return self._failed(f"HTTP {response.status_code}")

    def _failed(self, error: str) -> bool:
        self._count("failures", 1)
        self._last_error = error
        return False

    def _count(self, name: str, amount: int) -> None:
        with self._counts_lock:
            self._counts[name] += amount
            if name in ("shipped", "rejected"):
                self._unsent -= amount

    def _report_drops(self) -> None:
        with self._counts_lock:
            dropped = self._counts["dropped"]
        new = dropped - self._reported_drops
        if new > 0:
            self._reported_drops = dropped
            logger.warning("log shipping dropped %d lines (queue full; %d in all)", new, dropped,
                           extra={"event": "log_drops", "dropped": new,
                                  "dropped_total": dropped, "log_url": self.url})

    def _write_stats(self) -> None:
        if self.stats_dir is None:
            return
        try:
            self.stats_dir.mkdir(parents=True, exist_ok=True)
            path = self.stats_dir / f"{os.getpid()}.json"
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.stats()))
            temporary.replace(path)
        except OSError:
            pass  # counters are a courtesy; shipping goes on


_start_lock = threading.Lock()


@dataclass(frozen=True)
class ShippingSettings:
    """Log shipping as the environment sets it (``shipping_settings``); ``url`` None: off."""

    url: str | None
    queue_size: int = QUEUE_SIZE
    batch_size: int = BATCH_SIZE
    flush_seconds: float = FLUSH_SECONDS
    max_backoff_seconds: float = MAX_BACKOFF_SECONDS
    drop_report_seconds: float = DROP_REPORT_SECONDS
    stats_dir: str | None = None


def _fluentd_port(environ: Mapping[str, str]) -> int:
    """``FLUENTD_PORT``; malformed or out of range, one error saying the whole range."""
    try:
        port = env_at_least("FLUENTD_PORT", FLUENTD_PORT, 1, int, environ=environ)
        if port <= 65535:
            return port
    except SettingError:
        pass
    raise SettingError(f"FLUENTD_PORT must be {PORT_WORDS}, got {environ.get('FLUENTD_PORT')!r}")


def _log_tag(environ: Mapping[str, str]) -> str:
    """``EMP_LOG_TAG``, the URL's path (the receiver's tag). A ``#`` or ``?`` would cut it
    there (the rest sent as a fragment or a query, the tag the part before) and a space
    reaches the receiver as ``%20``: refused, not sent as some other tag."""
    tag = env("EMP_LOG_TAG", DEFAULT_TAG, environ=environ)
    if any(c in "#?" or c.isspace() for c in tag):
        raise SettingError(f"EMP_LOG_TAG must be {TAG_WORDS}, got {tag!r}")
    return tag


def shipping_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLUENT_BIT_URL``, else one built from ``FLUENTD_HOST``/``FLUENTD_PORT``; None if unset.
    Without FLUENT_BIT_URL, ``FLUENTD_PORT``, ``FLUENTD_SECURE`` and ``EMP_LOG_TAG`` are
    read (and a bad one refused) whether FLUENTD_HOST is set or not; with it, they are
    not used, so not read."""
    environ = os.environ if environ is None else environ
    if env("FLUENT_BIT_URL", environ=environ):
        return environ["FLUENT_BIT_URL"]
    port = _fluentd_port(environ)
    secure = flag_value("FLUENTD_SECURE", environ.get("FLUENTD_SECURE"))
    tag = _log_tag(environ)
    host = env("FLUENTD_HOST", environ=environ)
    if host:
        return f"{'https' if secure else 'http'}://{host}:{port}/{tag}"
    return None


def shipping_settings(environ: Mapping[str, str] | None = None) -> ShippingSettings:
    """Every log shipping setting of ``environ`` (the process's by default), checked: a
    malformed or out-of-range one raises SettingError (a ValueError) naming it and what
    it takes. Read whether shipping is on or not, so a start can refuse a bad one."""
    environ = os.environ if environ is None else environ
    numbers = {argument: env_at_least(variable, default, lowest, kind, above=above,
                                      environ=environ)
               for argument, (variable, default, lowest, kind, above) in NUMBERS.items()}
    return ShippingSettings(shipping_url(environ), stats_dir=env("EMP_LOG_STATS_DIR",
                                                                environ=environ),
                            **numbers)


def shipper_from_env(environ: Mapping[str, str] | None = None) -> LogShipper | None:
    """The shipper the environment configures; None when no receiver is set. A bad
    setting raises SettingError (``shipping_settings``), never becomes its default."""
    settings = shipping_settings(environ)
    if settings.url is None:
        return None
    return LogShipper(
        settings.url, queue_size=settings.queue_size, batch_size=settings.batch_size,
        flush_seconds=settings.flush_seconds, max_backoff_seconds=settings.max_backoff_seconds,
        drop_report_seconds=settings.drop_report_seconds, stats_dir=settings.stats_dir)


def read_stats(stats_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Summed counters of every process that kept them in ``stats_dir``."""
    totals = {"shipped": 0, "dropped": 0, "rejected": 0, "failures": 0, "processes": 0}
    for path in Path(stats_dir).glob("*.json"):
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        totals["processes"] += 1
        for key in ("shipped", "dropped", "rejected", "failures"):
            totals[key] += int(stats.get(key) or 0)
    return totals
