"""Celery's Redis result backend on a Redis Cluster.

Celery's backend talks to one server and writes a result with a pipelined
SET + PUBLISH, which a cluster pipeline refuses. Here the client is a
``RedisCluster`` (each ``celery-task-meta-*`` key goes to its slot's master)
and the PUBLISH, which a cluster broadcasts to every node, follows the SET.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

from capability_router.cluster import cluster_client

#: ``result_backend`` value prefix that selects this backend (``<this>+redis://...``).
BACKEND = "emp_tasks.cluster_backend:ClusterBackend"


class ClusterBackend(RedisBackend):
    """``RedisBackend`` with a cluster client."""

    def _create_client(self, **params: Any) -> Any:
        host, port = params.get("host") or "127.0.0.1", params.get("port") or 6379
        extra = {k: params[k] for k in ("password", "username") if params.get(k)}
        return cluster_client(f"redis://{host}:{port}/0", **extra)

    def _set(self, key: str, value: Any, expires: int | None = None) -> None:
        if expires is None:
            expires = self.expires
        self.client.set(key, value, ex=expires or None)
        self.client.publish(key, value)
