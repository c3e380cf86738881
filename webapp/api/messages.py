"""Event log entries as the original system's WebSocket messages.

Clients of the original read ``type`` plus flat fields; ``event_id`` is
added so a client can resume from the last event it saw.
"""

from __future__ import annotations

from typing import Any

from capability_router.states import JobEvent
from webapp import strict_json
from webapp.api.events import Event


def client_message(event: Event) -> dict[str, Any]:
    """The message a client connection gets for ``event``."""
    data = {k: v for k, v in event.data.items() if k not in ("job_id", "timestamp")}
    base = {"job_id": event.job_id, "event_id": event.id,
            "timestamp": event.data.get("timestamp")}
    if event.name == JobEvent.FAILED:
        # The original reports failure as a completion with a failed result.
        return {"type": "complete_job", **base, "worker_id": data.get("worker_id"),
                "result": {"status": "failed", "error": data.get("error")},
                "attempt": data.get("attempt")}
    if event.name == JobEvent.PROGRESS:
        return {"type": "update_job_progress", **base, **data}
    return {"type": event.name, **base, **data}


def monitor_message(event: Event) -> dict[str, Any]:
    """The message a monitor connection gets: the event as it is, typed by its name."""
    if event.namespace is None:
        return {"type": event.name, "event_id": event.id, **event.data}
    message = client_message(event)
    message["pool"] = event.namespace
    if event.name == JobEvent.FAILED:
        message["event"] = JobEvent.FAILED.value
    return message


def parse_message(text: str | bytes) -> dict[str, Any]:
    """A client's message as a dict, parsed as strictly as a REST body; ValueError naming
    what is wrong."""
    message = strict_json.loads(text)
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


def error_message(message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "error": message, **extra}
