"""Connector log events: the original ConnectorLogger's event names, on standard logging.

Every line goes to the ``emp.connector`` logger with ``extra`` fields
``event``, ``job_id``, ``connector_id``, ``service_type`` and ``error_type``
(None when not a failure), so a JSON formatter can emit them as they are;
machine and worker context fields are added by the machine runtime's
formatter, not here.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("emp.connector")

#: Events a connector writes (``job_cancelled`` is ours; the original had no name for it).
EVENTS = ("job_received", "job_started", "job_progress", "job_completed", "job_failed",
          "job_cancelled", "health_check")

#: LogRecord attributes an ``extra`` key may not overwrite.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def log_event(event: str | None, connector_id: str, service_type: str,
              job_id: str | None = None, level: int = logging.INFO, message: str | None = None,
              **fields: Any) -> None:
    """Log ``event`` (None: a line that is no lifecycle event, with the same context).

    ``fields`` named like LogRecord attributes get a ``field_`` prefix.
    """
    extra: dict[str, Any] = {"event": event, "job_id": job_id, "connector_id": connector_id,
                             "service_type": service_type, "error_type": None}
    for key, value in fields.items():
        extra[f"field_{key}" if key in _RESERVED else key] = value
    line = " ".join(part for part in (event, f"job={job_id}" if job_id else "") if part)
    logger.log(level, f"{line}: {message}" if message and line else message or line,
               extra=extra)
