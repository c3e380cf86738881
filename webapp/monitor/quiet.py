"""Flower's own lines about a Redis it cannot reach: the first of an outage, not one per try.

Flower tries to enable Celery events every 5 s and reconnects its event capture
with a growing wait (kombu's ConsumerMixin); while Redis hangs each failed try
logged its line ("Failed to enable events: ...", "Failed to capture events: ...",
"Broker connection error, trying again in N seconds: ..."), a line every few
seconds. The project's rule for its logs is one line per outage and one when it
ends. A logging filter on those loggers lets each kind's first line of an outage
pass; a call to enable events that succeeds again ends the outage, says so once,
and lets the next outage's first lines through. Flower's code is untouched: the
wrapped call is the monitor's own Celery app's ``control.enable_events``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: Flower's lines said once per outage (the start of each one's message).
REPEATED = ("Failed to enable events", "Failed to capture events", "Broker connection error")
#: The loggers that write them: Flower's event thread and kombu's consumer loop it runs.
LOGGERS = ("flower.events", "kombu.mixins")


class OncePerOutage(logging.Filter):
    """Passes the first of each ``REPEATED`` line until ``ended`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = next((k for k in REPEATED if str(record.msg).startswith(k)), None)
        if kind is None:
            return True
        with self._lock:
            first = kind not in self._said
            self._said.add(kind)
        if not first:  # at debug level, so that a repeat can be seen to have happened
            logger.debug("dropped a repeated line of %s (said once per outage)", record.name)
        return first

    def ended(self) -> None:
        """Flower reaches Redis again: say so once, if it had said it could not."""
        with self._lock:
            said, self._said = bool(self._said), set()
        if said:
            logger.warning("Flower: enabling Celery events works again")


def install(capp: Any) -> OncePerOutage:
    """Filter Flower's event lines; ``capp.control.enable_events`` (which Flower calls every
    5 s) reports its successes to the filter."""
    quiet = OncePerOutage()
    for name in LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    control = capp.control
    enable = control.enable_events

    def enable_events(*args: Any, **kwargs: Any) -> Any:
        result = enable(*args, **kwargs)
        quiet.ended()
        return result

    control.enable_events = enable_events
    return quiet
