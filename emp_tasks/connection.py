"""One Redis client per process and URL, for code outside the transport."""

from __future__ import annotations

import os

import redis

from capability_router.cluster import make_client
from capability_router.functions import QueueFunctions

_clients: dict[tuple[int, str], redis.Redis] = {}


def get_client(url: str) -> redis.Redis:
    """A client for ``url`` (a ``RedisCluster`` under ``EMP_REDIS_CLUSTER``), made anew
    after a fork."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = make_client(url, decode_responses=True)
    return client


def get_functions(url: str, namespace: str) -> QueueFunctions:
    return QueueFunctions(get_client(url), namespace)
