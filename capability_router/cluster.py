"""Redis Cluster: the one place that decides whether a URL means a cluster, and
builds its clients.

A cluster is named by the environment, not by the URL: ``EMP_REDIS_CLUSTER=1``
(or a comma list of extra seed nodes, ``host:port,host:port``) with the usual
``redis://host:port/0`` URL of any one node. The URL then passes unchanged
through kombu's, Celery's and redis-py's URL parsers, and every process a
machine or ``emp up`` starts inherits the switch with its environment.

Every key of one pool shares the hash tag ``{<namespace>}``, so each Redis
Function call stays in one slot; ``RedisCluster`` routes an FCALL by the slot of
its first key. What needs a node rather than a slot (a blocking read held on
the worker's event loop, a reader of several pools' streams) asks
``node_for_key``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.retry import Retry

from capability_router.env import (
    FALSE_WORDS,
    FLAG_WORDS,
    TRUE_WORDS,
    SettingError,
    env_at_least,
    flag_value,
)
from capability_router.green import blocking_pool, is_green

#: Environment switch: an on/off word ("1", "true", "yes", "on"; "0", ... off), or extra
#: seed nodes ``host:port,host:port`` (on); another value is refused.
CLUSTER_ENV = "EMP_REDIS_CLUSTER"

#: Retries of a call that met a moved slot or a dead master (backoff 50 ms doubling to
#: 0.5 s): about 4 s, more than a failover with a cluster-node-timeout of 2 s takes.
FAILOVER_RETRIES = 10

#: Connections a thread-per-job process may open per node: redis-py's default before
#: 8.0. Since 8.0 a pool refuses the 101st connection ("Too many connections"), so a
#: thread-pool worker with more than 100 jobs inside Redis calls at once (a Redis
#: pause is enough) failed them. Its threads bound the connections instead, as
#: Celery's ``redis_max_connections`` ("no limit" by default) documents.
THREAD_CONNECTIONS = 2**31

#: The operator's setting for ``SOCKET_TIMEOUT_SECONDS`` (seconds, above 0).
SOCKET_TIMEOUT_ENV = "EMP_REDIS_SOCKET_TIMEOUT"
#: Seconds a command (or a connect) waits for Redis before a TimeoutError, on every
#: client this project builds (default 5, redis-py 8's, made explicit: before 8 it was
#: "wait for ever", and kombu's transport still passes None). A Redis that stops
#: answering with its connections open (a hung host, a partition without RST) then
#: costs a caller this long, not every call after it for as long as it lasts. Read
#: once, on import, like the other settings of this package: a far or slow Redis wants
#: more, a quicker 503 (failover) less. A bad value stops the process's start.
SOCKET_TIMEOUT_SECONDS: float = env_at_least(SOCKET_TIMEOUT_ENV, 5.0, 0, above=True)
#: Seconds a client whose commands block in Redis on purpose (an XREAD with BLOCK)
#: waits beyond ``SOCKET_TIMEOUT_SECONDS``: its reads then outlast their own BLOCK
#: (1 s) with the usual margin for a slow answer (10 s with the default timeout).
BLOCKING_EXTRA_SECONDS = 5.0


def blocking_socket_timeout() -> float:
    """The socket timeout of a client of its own that blocks in Redis (XREAD BLOCK):
    ``SOCKET_TIMEOUT_SECONDS`` plus ``BLOCKING_EXTRA_SECONDS``, so a read that blocks
    its full length is never taken for a hung Redis, whatever the setting."""
    return SOCKET_TIMEOUT_SECONDS + BLOCKING_EXTRA_SECONDS


def block_ms(wanted_ms: int) -> int:
    """How long (ms) a blocking read (or an enqueue's ``WAIT``) on a client with the
    default socket timeout may block: ``wanted_ms``, but at most half of
    ``SOCKET_TIMEOUT_SECONDS``. With the setting at 1 s or less a 1 s BLOCK on such a
    client would time out every read."""
    return max(1, min(wanted_ms, int(SOCKET_TIMEOUT_SECONDS * 500)))


def _switch() -> tuple[bool, list[tuple[str, int]]]:
    """``EMP_REDIS_CLUSTER`` read: whether it is on, and its extra seeds. An on/off word
    (``env.flag_value``'s), empty for off, or a comma list of ``host:port``; anything else
    raises SettingError naming the variable (``maybe`` used to mean on)."""
    text = (os.environ.get(CLUSTER_ENV) or "").strip()
    if not text or text.lower() in TRUE_WORDS + FALSE_WORDS:
        return flag_value(CLUSTER_ENV, text), []
    seeds = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = item.rpartition(":")
        if not (host and port.isascii() and port.isdigit()):
            raise SettingError(f"{CLUSTER_ENV} must be {FLAG_WORDS}, or seed nodes "
                               f"host:port,host:port, got {text!r}")
        seeds.append((host, int(port)))
    return True, seeds


def cluster_enabled() -> bool:
    """True when ``EMP_REDIS_CLUSTER`` says the Redis is a cluster."""
    return _switch()[0]


def seed_nodes(url: str) -> list[ClusterNode]:
    """The URL's node, then the extra seeds of ``EMP_REDIS_CLUSTER``.

    Extra seeds let a process start while the URL's node is down (it failed
    over and was not replaced yet).
    """
    parsed = urlparse(url)
    return [ClusterNode(parsed.hostname or "127.0.0.1", parsed.port or 6379),
            *(ClusterNode(host, port) for host, port in _switch()[1])]


class _FunctionSlots:
    """Find an FCALL's slot from its own arguments, as redis-py does for EVALSHA.

    redis-py asks the server (``COMMAND GETKEYS``, a round trip to another
    node) for the keys of every FCALL; measured, that doubled the calls per
    job and made the node it asks the busiest of the cluster.
    """

    def determine_slot(self, *args: Any) -> int | None:
        if str(args[0]).upper() in ("FCALL", "FCALL_RO") and len(args) > 3 and int(args[2]):
            slots = {self.keyslot(key) for key in args[3:3 + int(args[2])]}
            if len(slots) == 1:
                return slots.pop()
        return super().determine_slot(*args)


class EmpClusterPipeline(_FunctionSlots, ClusterPipeline):
    """A cluster pipeline whose FCALLs find their slot without asking the server."""


class EmpRedisCluster(_FunctionSlots, RedisCluster):
    """``RedisCluster`` whose FCALLs (and pipelines' FCALLs) find their slot locally."""

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = EmpClusterPipeline  # same state, one method more
        return pipe


def cluster_client(url: str, **kwargs: Any) -> RedisCluster:
    """A ``RedisCluster`` seeded from ``url`` (its password and TLS) and the extra seeds."""
    parsed = urlparse(url)
    if parsed.path.strip("/") not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0; the URL names {parsed.path!r}")
    options: dict[str, Any] = {"startup_nodes": seed_nodes(url), "ssl": parsed.scheme == "rediss"}
    if parsed.username:
        options["username"] = parsed.username
    if parsed.password:
        options["password"] = parsed.password
    # A failover takes cluster-node-timeout plus an election: keep retrying
    # (re-reading the slot map each time) a little longer than that.
    options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), FAILOVER_RETRIES)
    options["max_connections"] = THREAD_CONNECTIONS
    options["socket_timeout"] = options["socket_connect_timeout"] = SOCKET_TIMEOUT_SECONDS
    return EmpRedisCluster(**{**options, **kwargs})


def make_client(url: str, **kwargs: Any) -> redis.Redis | RedisCluster:
    """A client for ``url``: a ``RedisCluster`` when the cluster switch is on; commands
    time out after ``SOCKET_TIMEOUT_SECONDS`` unless ``kwargs`` say otherwise."""
    kwargs = {"socket_timeout": SOCKET_TIMEOUT_SECONDS,
              "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS, **kwargs}
    if cluster_enabled():
        return cluster_client(url, **kwargs)
    if is_green():
        return redis.Redis(connection_pool=blocking_pool(url, **kwargs))
    return redis.Redis.from_url(url, **{"max_connections": THREAD_CONNECTIONS, **kwargs})


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def node_for_key(client: RedisCluster, key: str) -> ClusterNode:
    """The master that serves ``key``'s slot now (as far as the client knows)."""
    return client.nodes_manager.get_node_from_slot(client.keyslot(key))


def refresh_slots(client: RedisCluster) -> None:
    """Re-read the slot map (after a connection error: a master may have failed over)."""
    client.nodes_manager.initialize()


def primaries(client: RedisCluster) -> list[ClusterNode]:
    return client.get_primaries()


#: On a cluster, how long a reader of several slots' streams blocks on one slot
#: before it reads all of them again, ms: the most an event waits for it.
STREAM_SLICE_MS = 100


def slot_groups(client: Any, streams: list[str]) -> list[list[str]]:
    """``streams`` grouped by hash slot (one group on a plain server).

    A cluster refuses a command whose keys span slots, so a reader of several
    pools' streams sends one XREAD per group.
    """
    if not is_cluster_client(client):
        return [streams] if streams else []
    groups: dict[int, list[str]] = {}
    for stream in streams:
        groups.setdefault(client.keyslot(stream), []).append(stream)
    return list(groups.values())
