"""Whether an event passes a hook's filters.

Every filter given must hold (AND); a list admits any of its values (OR);
an empty list filters nothing. A filter on a field admits only events that
carry that field: a ``worker_ids`` filter lets no ``job_submitted`` through
(no worker yet) and a ``job_types`` filter no ``worker_status`` event. The
fields come from the event, enriched from the job record (``enrich.py``).

``priorities`` admits the listed priorities; ``min_priority`` and
``max_priority`` bound the priority, inclusive; given together, both hold.
"""

from __future__ import annotations

from typing import Any

#: Filter key -> event data field it constrains.
LIST_FILTERS = {
    "job_types": "job_type", "machine_ids": "machine_id", "worker_ids": "worker_id",
    "customer_ids": "customer_id", "workflow_ids": "workflow_id",
}


def _priority(data: dict[str, Any]) -> float | None:
    value = data.get("priority")
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def matches(filters: dict[str, Any] | None, data: dict[str, Any]) -> bool:
    """True when the event ``data`` passes every filter of ``filters``."""
    if not filters:
        return True
    for key, field in LIST_FILTERS.items():
        allowed = filters.get(key)
        if allowed:
            value = data.get(field)
            if value is None or value == "" or str(value) not in allowed:
                return False
    listed = filters.get("priorities")
    low, high = filters.get("min_priority"), filters.get("max_priority")
    if listed or low is not None or high is not None:
        priority = _priority(data)
        if priority is None:
            return False
        if listed and priority not in listed:
            return False
        if low is not None and priority < low:
            return False
        if high is not None and priority > high:
            return False
    return True
