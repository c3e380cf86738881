"""Celery's Redis result backend, counting each chord part once whoever reports it.

A chord part can be reported more than once here. A job cancelled after its
claim, before its run started (waiting in its worker's rate-limit bucket), is
stored REVOKED with its request by the canceller, which counts its part at
once: the worker holding it may stop (SIGTERM) or die (SIGKILL) before the
bucket lets it go, and then no one else ever counts it (its chord's body
stayed PENDING for good). A worker still running stores it REVOKED again
with the request when the bucket lets it go, and so reports the part a
second time; a job resubmitted after its cancel reports its new end too.

Celery 5.7's chord script counts a part once (keyed on task id and header
index); Celery 5.4 to 5.6 count every report, so a second report fired the
body early (seen on 5.5.3). This project installs with 5.5 and later: here a
per-part marker (task id and header index, as Celery 5.7 keys it), taken with
``SET NX`` before the count, lets only the first report count, on each
release and whatever a later Celery's script does, for one ``SET`` a part. That is the
simplest design that holds for every reporter (canceller, worker's revoke
path, a run's own end, the queue's gave-up store) without each of them
knowing about the others. The marker lives as long as the chord's counters
(``result_expires``); a count that fails in Redis gives the marker back, so a
later report counts instead.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

#: ``result_backend`` value prefix that selects this backend (``<this>+redis://...``).
BACKEND = "emp_tasks.chord_parts:PartOnceBackend"


class PartOnceBackend(RedisBackend):
    """Celery's ``RedisBackend`` (``redis://``, ``rediss://``) counting each chord part once."""

    def part_key(self, request: Any) -> str:
        """The marker of a report's chord part: group, task id and header index."""
        index = "+inf" if request.group_index is None else request.group_index
        key = self.get_key_for_group(request.group, f".counted.{request.id}.{index}")
        return key.decode() if isinstance(key, bytes) else key

    def on_chord_part_return(self, request: Any, state: Any, result: Any,
                             **kwargs: Any) -> Any:
        if not request.group or not request.id:
            return super().on_chord_part_return(request, state, result, **kwargs)
        key = self.part_key(request)
        if not self.client.set(key, 1, nx=True, ex=self.expires or None):
            return None  # counted by an earlier report of the same part
        try:
            return super().on_chord_part_return(request, state, result, **kwargs)
        except Exception:
            self.client.delete(key)
            raise
