"""Event types a hook may subscribe to, and the event log entries they come from.

Every event the log carries can be delivered (the original dropped some):
the original's ten types plus the job life-cycle events in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: The original's event types (emp-behaviour.md).
ORIGINAL_EVENTS = (
    "job_submitted", "update_job_progress", "complete_job", "job_failed", "job_cancelled",
    "worker_status", "machine_status", "workflow_submitted", "workflow_completed",
    "workflow_failed",
)
#: Further job events of the log.
LIFECYCLE_EVENTS = (
    "job_assigned", "job_started", "job_retrying", "job_requeued", "job_released",
    "job_resubmitted", "job_preparing", "job_escalated", "job_replaced",
)
#: Pool events that concern no job: the intelligence leader's placement directives and
#: what the worker did with them (``capability_router.prediction.directives``).
PLACEMENT_EVENTS = ("placement_directive", "placement_done")
EVENT_TYPES = ORIGINAL_EVENTS + LIFECYCLE_EVENTS + PLACEMENT_EVENTS
#: Names the original's registrations used for the same events.
ALIASES = {"cancel_job": "job_cancelled"}
#: Events of the system stream (no job).
SYSTEM_EVENTS = frozenset({"worker_status", "machine_status"})
#: Events throttled per job and hook.
PROGRESS_EVENT = "update_job_progress"
#: Stream name used in event ids of the system stream: not a valid pool name,
#: so it cannot collide with a pool's ids.
SYSTEM_SOURCE = "@system"


def canonical_events(names: list[str]) -> list[str]:
    """Subscription names with aliases resolved, order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        name = ALIASES.get(name, name)
        if name not in out:
            out.append(name)
    return out


def entry_ms(entry_id: str) -> int:
    """The ms part of a stream entry id (Redis time the event was appended)."""
    return int(entry_id.partition("-")[0])


@dataclass
class Event:
    """One entry of an event stream, as the webhook service sees it.

    ``event_id`` is ``<pool>:<entry id>`` (``@system:<entry id>`` for worker
    and machine events): the entry id alone is unique only within a stream.
    """

    event_id: str
    entry_id: str
    name: str
    job_id: str
    data: dict[str, Any]
    #: Pool of a job event; None for system events.
    namespace: str | None

    @property
    def timestamp(self) -> int:
        value = self.data.get("timestamp")
        return int(value) if isinstance(value, int | float) else entry_ms(self.entry_id)

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str], namespace: str | None) -> Event:
        try:
            data = json.loads(fields.get("data") or "{}")
        except ValueError:
            data = {"raw": fields.get("data")}
        if not isinstance(data, dict):
            data = {"value": data}
        job_id = fields.get("job_id") or data.get("job_id") or ""
        source = namespace if namespace is not None else SYSTEM_SOURCE
        return cls(f"{source}:{entry_id}", entry_id, fields.get("event", ""), str(job_id),
                   data, namespace)
