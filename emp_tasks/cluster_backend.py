"""Celery's Redis result backend on a Redis Cluster.

Celery's backend talks to one server and writes a result with a pipelined
SET + PUBLISH, which a cluster pipeline refuses. Here the client is a
``RedisCluster`` (each ``celery-task-meta-*`` key goes to its slot's master)
and the PUBLISH, which a cluster broadcasts to every node, follows the SET.
A group's results are read slot by slot, and a group's chord counters share a
hash tag, so groups and chords work as on one Redis (Celery's chord script
counts each part once).
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend, ResultConsumer

from capability_router.cluster import cluster_client

#: ``result_backend`` value prefix that selects this backend (``<this>+redis://...``).
BACKEND = "emp_tasks.cluster_backend:ClusterBackend"


class ClusterResultConsumer(ResultConsumer):
    """Celery's result listener, reconnecting without a client-wide connection pool.

    A ``RedisCluster`` has a pool per node, not one ``connection_pool`` to
    reset, and no cross-slot MGET; its pub/sub picks a live node when it
    subscribes again.
    """

    def on_after_fork(self) -> None:
        self._reset_sync()
        with self._locked():
            if self._pubsub is not None:
                self._pubsub.close()
                self._pubsub = None

    def _reconnect_pubsub(self) -> None:
        with self._locked():
            if self._pubsub is not None:
                try:
                    self._pubsub.close()
                except Exception:  # noqa: BLE001 - its node may be dead; a new one follows
                    pass
            self._pubsub = None
            self.backend.client.nodes_manager.initialize()
            for key in list(self.subscribed_to):
                meta = self.backend.client.get(key)
                if meta:
                    self.on_state_change(self._decode_result(meta), None)
            self._pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
            self.subscribed_to -= self._pending_unsubscribe
            self._pending_unsubscribe.clear()
            if self.subscribed_to:
                self._pubsub.subscribe(*self.subscribed_to)


class ClusterBackend(RedisBackend):
    """``RedisBackend`` with a cluster client."""

    ResultConsumer = ClusterResultConsumer

    def get_key_for_group(self, group_id: Any, key: str = "") -> Any:
        """A group's keys, with its id as their hash tag: the chord script reads and
        writes a group's counters in one call, which a cluster refuses across slots
        (CROSSSLOT: a chord's body never ran)."""
        return super().get_key_for_group(f"{{{group_id}}}" if group_id else group_id, key)

    def mget(self, keys: list[Any]) -> list[Any]:
        """Results of many tasks (``GroupResult.get``), read slot by slot: a cluster
        refuses an MGET across slots."""
        return self.client.mget_nonatomic(keys)

    def _create_client(self, **params: Any) -> Any:
        host, port = params.get("host") or "127.0.0.1", params.get("port") or 6379
        extra = {k: params[k] for k in ("password", "username") if params.get(k)}
        return cluster_client(f"redis://{host}:{port}/0", **extra)

    def _set(self, key: str, value: Any, expires: int | None = None) -> None:
        if expires is None:
            expires = self.expires
        self.client.set(key, value, ex=expires or None)
        self.client.publish(key, value)
