"""Whether Redis may evict the queue's keys: one loud warning for the operator at start.

With an evicting ``maxmemory-policy`` (``allkeys-lru`` and the other
``allkeys-*``, or a ``volatile-*`` one), Redis at ``maxmemory`` deletes keys
to make room, silently: a pending job's record or its place in line, a
lease, an ``Idempotency-Key`` (a retried submit then makes a second job).
An accepted job can vanish with no error anywhere. ``noeviction`` refuses
writes instead, which every part of this system reports (workers wait, the
API answers 503). Celery's and Sidekiq's Redis brokers warn the same way.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

logger = logging.getLogger(__name__)

#: The one policy under which Redis never deletes a key it was given.
SAFE_POLICY = "noeviction"


def eviction_risk(client: Any) -> str | None:
    """Why ``client``'s Redis may delete the queue's keys, or None when it may not (or
    cannot be asked: ``CONFIG`` renamed or refused, as some managed services do)."""
    try:
        raw = client.config_get("maxmemory*")
    except redis.RedisError:
        return None
    settings = {_text(key): _text(value) for key, value in raw.items()}
    policy = settings.get("maxmemory-policy")
    if not policy or policy == SAFE_POLICY:
        return None
    limit = settings.get("maxmemory") or "0"
    reach = "at its maxmemory" if str(limit) != "0" else "once a maxmemory is set"
    return (f"Redis maxmemory-policy is {policy!r}: {reach} it deletes keys to make room, "
            "so accepted jobs, leases and idempotency keys can vanish without an error; "
            f"set maxmemory-policy {SAFE_POLICY} (CONFIG SET and redis.conf)")


def warn_if_evicting(client: Any, who: str) -> str | None:
    """Log ``eviction_risk`` as a warning naming ``who``; returns it."""
    risk = eviction_risk(client)
    if risk:
        logger.warning("%s: WARNING: %s", who, risk)
    return risk


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
