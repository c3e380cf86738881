"""JSON log lines with machine, worker, job and deployment context on every line.

One line per record (python-json-logger), in this order:

- ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``pid``, ``message``;
- worker context, the original ConnectorLogger's fields: ``machine_id`` (MACHINE_ID),
  ``worker_id`` (WORKER_ID), ``service_type`` (WORKER_SERVICES), ``connector_id``
  (EMP_CONNECTOR_ID), ``job_id`` (the record's, else the Celery task running);
- deployment context: ``deployment_env`` (EMP_DEPLOYMENT_ENV), ``region``
  (EMP_REGION, else WORKER_REGION), ``cloud_provider`` (EMP_CLOUD_PROVIDER),
  ``instance_id`` (EMP_INSTANCE_ID, else the hostname);
- connector events: ``event`` (``job_received``, ``job_started``, ``job_progress``,
  ``job_completed``, ``job_failed``, ``job_cancelled``, ``health_check``, and the
  machine's own ``machine_*`` events) and ``error_type``;
- any other ``extra`` fields of the record (``percent``, ``duration_ms``, ...).

Every field is present on every line, ``null`` when unknown, so a query on
a field never misses lines that lack it. A record's own value (a connector's
``service_type``, ``job_id``) wins over the process context.

``configure_logging()`` sets this up on the root logger (stderr), plus the
HTTP log shipper when one is configured (``machine.shipping``). ``emp worker``
(and a plain ``celery -A emp_tasks.app worker``, ``emp_tasks.plain_worker``) uses
it when ``EMP_LOG_FORMAT=json`` (``emp machine`` sets that for its workers) and
takes Celery's ``setup_logging`` signal so Celery leaves the handlers alone.
``log_format`` reads that variable: ``json`` or ``text`` in any case, else SettingError.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from celery import current_task
from celery.signals import setup_logging
from pythonjsonlogger.json import JsonFormatter

from capability_router.env import SettingError

#: The original ConnectorLogger's context fields.
CONTEXT_FIELDS = ("machine_id", "worker_id", "service_type", "connector_id", "job_id")
#: Deployment fields and the variables they come from (first set wins).
DEPLOYMENT_FIELDS: dict[str, tuple[str, ...]] = {
    "deployment_env": ("EMP_DEPLOYMENT_ENV",),
    "region": ("EMP_REGION", "WORKER_REGION"),
    "cloud_provider": ("EMP_CLOUD_PROVIDER",),
    "instance_id": ("EMP_INSTANCE_ID",),
}
#: Event fields of connector (and machine) log lines.
EVENT_FIELDS = ("event", "error_type")
#: Every field a line always carries, in order after the standard ones.
LINE_FIELDS = (*CONTEXT_FIELDS, *DEPLOYMENT_FIELDS, *EVENT_FIELDS)

_FORMAT = " ".join(f"%({name})s" for name in
                   ("levelname", "name", "process", "message", *LINE_FIELDS))
_RENAMES = {"levelname": "level", "name": "logger", "process": "pid"}

_configured = False

#: What ``EMP_LOG_FORMAT`` takes, as its error says.
FORMAT_WORDS = "json or text (any case; unset: text)"


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``EMP_LOG_FORMAT`` as ``json`` or ``text`` (unset or empty: text). Any case and
    spaces around are taken (an operator writes ``JSON``); anything else raises
    SettingError: a typo used to mean text, lines no shipper ever saw."""
    text = (os.environ if environ is None else environ).get("EMP_LOG_FORMAT") or ""
    value = text.strip().lower() or "text"
    if value not in ("json", "text"):
        raise SettingError(f"EMP_LOG_FORMAT must be {FORMAT_WORDS}, got {text!r}")
    return value


def context_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """This process's context fields, from the environment."""
    env = os.environ if environ is None else environ
    context: dict[str, str | None] = {
        "machine_id": env.get("MACHINE_ID") or None,
        "worker_id": env.get("WORKER_ID") or None,
        "service_type": env.get("WORKER_SERVICES") or None,
        "connector_id": env.get("EMP_CONNECTOR_ID") or None,
    }
    for name, variables in DEPLOYMENT_FIELDS.items():
        context[name] = next((env[v] for v in variables if env.get(v)), None)
    context["instance_id"] = context["instance_id"] or socket.gethostname()
    return context


class ContextFilter(logging.Filter):
    """Fill every line field the record lacks from the process context (never rejects)."""

    def __init__(self, context: Mapping[str, str | None]) -> None:
        super().__init__()
        self.context = dict(context)

    def filter(self, record: logging.LogRecord) -> bool:
        for name in LINE_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, self.context.get(name))
        if record.job_id is None:  # type: ignore[attr-defined]
            record.job_id = _current_job_id()
        return True


def _current_job_id() -> str | None:
    task = current_task
    try:
        return task.request.id if task else None
    except AttributeError:
        return None


def json_formatter() -> JsonFormatter:
    """The JSON line formatter (field order and names as in the module docstring)."""
    return JsonFormatter(_FORMAT, rename_fields=_RENAMES, timestamp=True)


def configure_logging(level: int | str = "INFO", stream: TextIO | None = None,
                      environ: Mapping[str, str] | None = None) -> logging.Logger:
    """Make the root logger write JSON lines to ``stream`` (stderr) and the shipper.

    Idempotent per process (a forked child keeps its parent's setup; the
    shipper restarts itself there); later calls only change the level.
    """
    global _configured
    root = logging.getLogger()
    root.setLevel(_level(level))
    if _configured:
        return root
    from machine.shipping import shipper_from_env

    context_filter = ContextFilter(context_from_env(environ))
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    shipper = shipper_from_env(environ)
    if shipper is not None:
        handlers.append(shipper)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(json_formatter())
        handler.addFilter(context_filter)
        root.addHandler(handler)
    _configured = True
    return root


def use_json_logging(loglevel: int | str = "INFO") -> None:
    """JSON logging for ``emp worker``: configure now, and keep Celery from configuring.

    A receiver of Celery's ``setup_logging`` signal makes Celery skip its own
    logging setup (in the worker and in each pool process); the receiver only
    applies the worker's log level.
    """
    configure_logging(loglevel)
    setup_logging.connect(_celery_setup_logging, weak=False)


def _celery_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    configure_logging(loglevel or "INFO")


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(str(level).upper())
    return value if isinstance(value, int) else logging.INFO
