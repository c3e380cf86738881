"""When the monitor stops counting a worker as live: one rule for every page.

A worker heartbeats every third of a lease; its registry record outlives it by
three leases (``capability_router.registry``), so a SIGKILLed worker's record reads
"idle" for ~90 s by default. The monitor treats a worker silent for one lease
(three missed heartbeats) as gone from view: the Machines page marks it (and a
group of only such workers) stale, the Queue page and a pending job's servability
stop naming it. Claims and routing keep their own rule (the pool's live set);
this only decides what the monitor shows.
"""

from __future__ import annotations

from typing import Any

from emp_tasks.defaults import lease_seconds


def silent(last_seen_ms: int | None, now_ms: int) -> bool:
    """Whether a heartbeat stamped ``last_seen_ms`` (Redis' clock) is a lease old
    (``EMP_LEASE_SECONDS``: three missed heartbeats) at ``now_ms``; no stamp at all is
    not silence (nothing to judge by)."""
    return bool(last_seen_ms) and now_ms - int(last_seen_ms or 0) > int(
        lease_seconds() * 1000)


def heard_from(records: list[dict[str, Any]], now_ms: int) -> list[dict[str, Any]]:
    """The registry records whose worker heartbeat within the last lease."""
    return [r for r in records if not silent(r.get("last_seen"), now_ms)]
