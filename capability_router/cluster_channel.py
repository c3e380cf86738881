"""The Redis Cluster side of the capability transport's channel (a mixin of ``Channel``).

kombu's Redis channel talks to one server. On a cluster (``EMP_REDIS_CLUSTER``)
this mixin gives it a ``RedisCluster`` for every request/reply call (kombu's
own included), keeps the event loop's one connection pointed at the master
of the pool it claims from or waits on, and works around what a cluster
refuses in kombu: multi-key BRPOPs (Celery's reply queues get one priority
step), binding scripts over keys of two slots (one hash tag, ``{_kombu}``),
EVALSHA in a pipeline, and ``pipe = pipe.delete(...)`` chains. Off a
cluster every method defers to kombu.
"""

from __future__ import annotations

from functools import cached_property
from time import monotonic
from typing import Any

from capability_router.cluster import (
    SOCKET_TIMEOUT_SECONDS,
    cluster_client,
    cluster_enabled,
    node_for_key,
)
from capability_router.green import blocking_pool, is_green


class ClusterChannel:
    """Mixin before ``kombu.transport.redis.Channel``; ``setup_cluster`` runs before its init."""

    #: On a Redis Cluster.
    cluster: bool = False

    def setup_cluster(self) -> None:
        """Read the switch and adapt kombu's key layout (before kombu's init connects)."""
        self.cluster = cluster_enabled()
        #: The event loop's connection to each master, by node name.
        self._node_connections: dict[str, Any] = {}
        if self.cluster:
            self.priority_steps = [0]  # one key per reply-queue BRPOP (one slot)
            # kombu's binding tables share one slot: its scripts touch two of them.
            self.keyprefix_queue = "{_kombu}.binding.%s"
            self.keyprefix_binding_deadlines = "{_kombu}.binding_deadlines"
            self.keyprefix_binding_permanent = "{_kombu}.binding_permanent.%s"

    @cached_property
    def cluster_client(self) -> Any:
        """A ``RedisCluster`` seeded from the broker URL (cluster only)."""
        info = self.connection.client
        extra = {k: v for k, v in (("username", info.userid), ("password", info.password)) if v}
        connect = self.socket_connect_timeout or SOCKET_TIMEOUT_SECONDS
        return cluster_client(f"redis://{info.hostname or '127.0.0.1'}:{info.port or 6379}/0",
                              socket_connect_timeout=connect,
                              socket_timeout=self.socket_timeout, **extra)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params = super()._connparams(asynchronous)
        if self.cluster and "host" in params:
            # Pub/sub (fanout) works on any node; take a live master, not the
            # URL's node, which may have died.
            node = self.cluster_client.get_primaries()[0]
            params["host"], params["port"] = node.host, node.port
        return params

    def _get_pool(self, asynchronous: bool = False) -> Any:
        if asynchronous or not is_green():
            return super()._get_pool(asynchronous)
        # kombu's pool of 10 would refuse the 11th greenlet publishing at once.
        pool = super()._get_pool(asynchronous)
        return blocking_pool(**pool.connection_kwargs,
                             connection_class=pool.connection_class,
                             max_connections=pool.max_connections)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if self.cluster and not asynchronous:
            return self.cluster_client
        return super()._create_client(asynchronous)

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str,
                *args: Any, **kwargs: Any) -> None:
        if not self.cluster:
            return super()._delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        # kombu chains ``pipe = pipe.delete(...)``; a cluster pipeline's delete returns None.
        self.auto_delete_queues.discard(queue)
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        client = self.cluster_client
        client.srem(self.keyprefix_queue % (exchange,), member)
        client.srem(self.keyprefix_binding_permanent % (exchange,), member)
        for pri in self.priority_steps:
            client.delete(self._q_for_pri(queue, pri))

    def _refresh_bindings(self, queues: list[str]) -> None:
        if not self.cluster:
            return super()._refresh_bindings(queues)
        # A cluster pipeline refuses EVALSHA: one call per binding (few, once a minute).
        for queue in queues:
            for exchange, routing_key, args in self.state.queue_bindings(queue):
                _, pattern, _ = self.typeof(exchange).prepare_bind(
                    queue, exchange, routing_key, args)
                self._refresh_binding(
                    keys=[self.keyprefix_queue % (exchange,), self._script_binding_deadlines],
                    args=[self.sep.join([routing_key or "", pattern or "", queue]),
                          exchange, self._binding_ttl(queue)],
                    client=self.cluster_client)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        if not self.cluster:
            return super()._has_queue(queue, **kwargs)
        return any(self.cluster_client.exists(self._q_for_pri(queue, pri))
                   for pri in self.priority_steps)

    def _use_node_of(self, key: str) -> None:
        """Point the event loop's connection at the master serving ``key`` (cluster only).

        One connection per master is kept; switching re-registers the socket
        with kombu's poller, so the next reply wakes the loop as usual.
        """
        if not self.cluster:
            return
        node = node_for_key(self.cluster_client, key)
        connection = self._node_connections.get(node.name)
        if connection is None:
            pool = self.async_pool
            connection = pool.connection_class(
                **{**pool.connection_kwargs, "host": node.host, "port": node.port})
            self._node_connections[node.name] = connection
        client = self.client
        if client.connection is connection and connection._sock is not None:
            return
        client.connection = connection
        if connection._sock is None:
            connection.connect()
        self.connection.cycle._register(self, client, "BRPOP")

    def _cluster_brpop_start(self, timeout: float | None) -> None:
        """kombu's BRPOP of plain queues (Celery's reply queues), one queue's key at a time."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        key = self._q_for_pri(queues[0], 0)
        self._use_node_of(key)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command("BRPOP", key, timeout or self.block_seconds)
