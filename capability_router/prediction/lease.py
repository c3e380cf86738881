"""A leader lease in Redis: one of any number of instances leads, a dead leader is replaced.

The same rule as the webhook consumer's role (``emp_wh_lead``): the lease
holds the leader's token ``<instance>:<run id>`` and expires unless renewed;
an instance takes it when it is free or held by an earlier run of the same
instance (a restart takes its role back at once); a killed leader is
replaced within ``ttl_ms``. Taking and renewing are one check-and-set each,
done with WATCH/MULTI so a renewal never extends a lease another instance
took meanwhile; no Lua library is needed for a key no job function reads.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis

#: ``hold`` answers.
LOST, KEPT, TAKEN = 0, 1, 2


class Lease:
    """One instance's view of a leader lease.

    :param client: a redis-py client (``decode_responses=True``).
    :param key: the lease key.
    :param instance: this instance's name (a restarted instance reuses it).
    :param ttl_ms: milliseconds the lease lasts unless renewed.
    """

    def __init__(self, client: Any, key: str, instance: str, ttl_ms: int) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
        self.client, self.key, self.ttl_ms = client, key, int(ttl_ms)
        self.instance = instance
        self.token = f"{instance}:{uuid.uuid4().hex[:12]}"

    def hold(self) -> int:
        """Take or renew the lease: TAKEN (2) newly, KEPT (1) renewed, LOST (0) held elsewhere."""
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    holder = pipe.get(self.key)
                    if holder is not None and holder != self.token and not holder.startswith(
                            self.instance + ":"):
                        pipe.unwatch()
                        return LOST
                    pipe.multi()
                    pipe.set(self.key, self.token, px=self.ttl_ms)
                    pipe.execute()
                    return KEPT if holder == self.token else TAKEN
                except redis.WatchError:  # someone changed it between GET and SET: look again
                    continue

    def release(self) -> bool:
        """Give the lease up if this run holds it (a clean stop hands over at once)."""
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) != self.token:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(self.key)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def holder(self) -> str | None:
        """The token of the instance that leads now (None: nobody)."""
        return self.client.get(self.key)
