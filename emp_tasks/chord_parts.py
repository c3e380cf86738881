"""The name ``emp_tasks.chord_parts:PartOnceBackend``, kept for configurations that use it.

A chord part can be reported more than once here: a job cancelled after its
claim, before its run started, is stored REVOKED with its request by the
canceller (its part counted at once, whatever its worker does next), and the
worker still holding it stores it again (``emp_tasks.cancellation``).
Celery 5.7, which this project requires, counts each part once in its own
chord script (keyed on task id and header index), in the same atomic step as
the count. Releases before this one took a marker of their own with a
``SET NX`` ahead of that script for Celery 5.5 and 5.6, which counted every
report; a reporter killed between the two left the marker and no count, and
the part's next report was then dropped as a repeat (the chord's body waited
for ever). The project's apps use Celery's ``RedisBackend`` as it is; a
``result_backend`` of ``emp_tasks.chord_parts:PartOnceBackend+redis://...``
still selects it.
"""

from __future__ import annotations

from celery.backends.redis import RedisBackend

#: ``result_backend`` value prefix that selects this backend (``<this>+redis://...``).
BACKEND = "emp_tasks.chord_parts:PartOnceBackend"


class PartOnceBackend(RedisBackend):
    """Celery's ``RedisBackend``, under the name earlier releases documented."""
