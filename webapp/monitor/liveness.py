"""When the monitor stops counting a worker as live: one rule for every page.

A worker heartbeats every third of its lease; its registry record outlives it by
three leases (``capability_router.registry``), so a SIGKILLed worker's record reads
"idle" for ~90 s by default. The monitor treats a worker silent for one lease
(three missed heartbeats) as gone from view: the Machines page marks it (and a
group of only such workers) stale, the Queue page and a pending job's servability
stop naming it. Claims and routing keep their own rule (the pool's live set);
this only decides what the monitor shows.

The lease is the worker's own, from its record (``lease_ms``): a worker started with
a longer lease than the monitor's heartbeats less often, and judged by the monitor's
``EMP_LEASE_SECONDS`` it read silent between heartbeats. A record of a worker too old
to carry it is judged by the monitor's setting.
"""

from __future__ import annotations

from typing import Any

from emp_tasks.defaults import lease_seconds


def lease_ms(record: dict[str, Any]) -> int:
    """The lease ``record``'s worker runs with, ms; the monitor's ``EMP_LEASE_SECONDS``
    when the record names none (or nothing usable)."""
    try:
        own = int(record.get("lease_ms") or 0)
    except (TypeError, ValueError):
        own = 0
    return own if own > 0 else int(lease_seconds() * 1000)


def silent(record: dict[str, Any], now_ms: int) -> bool:
    """Whether the newest heartbeat of ``record``'s worker (``last_seen``, Redis' clock)
    is one of its leases old (three missed heartbeats) at ``now_ms``; no stamp at all is
    not silence (nothing to judge by)."""
    last_seen = record.get("last_seen")
    return bool(last_seen) and now_ms - int(last_seen or 0) > lease_ms(record)


def heard_from(records: list[dict[str, Any]], now_ms: int) -> list[dict[str, Any]]:
    """The registry records whose worker heartbeat within its last lease."""
    return [r for r in records if not silent(r, now_ms)]
