"""Green processes: Redis connection pools that wait for a connection instead of failing.

The API runs under gunicorn's gevent worker, where every request and WebSocket
is a greenlet. redis-py's pool (100 connections) and kombu's (10) raise "Too many
connections" as soon as more greenlets than that call Redis at once, which
2,000 open sockets do; a ``BlockingConnectionPool`` bounds the connections and
makes the extra callers wait, up to a timeout. Threads of a green process are
greenlets too, so nothing may be kept per thread for good (see
``functions.held_connection``).
"""

from __future__ import annotations

import sys
from typing import Any

import redis

from capability_router.env import env_int

#: Connections per pool in a green process (``EMP_GREEN_REDIS_CONNECTIONS``).
CONNECTIONS = env_int("EMP_GREEN_REDIS_CONNECTIONS", 200)
#: Seconds a caller waits for a free connection before a ConnectionError.
WAIT_SECONDS = 20.0


def is_green() -> bool:
    """True in a process gevent has monkey-patched (threads are greenlets)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("threading"))


def blocking_pool(url: str | None = None, **params: Any) -> redis.BlockingConnectionPool:
    """A pool of at most ``CONNECTIONS`` whose callers wait ``WAIT_SECONDS`` for one;
    from ``url`` or from connection ``params`` (kombu's)."""
    params = {**params, "max_connections": max(CONNECTIONS, params.get("max_connections") or 0),
              "timeout": WAIT_SECONDS}
    if url is not None:
        return redis.BlockingConnectionPool.from_url(url, **params)
    return redis.BlockingConnectionPool(**params)
