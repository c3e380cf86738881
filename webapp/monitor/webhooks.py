"""The monitor's Webhooks view: registered hooks with their health, and recent deliveries.

Everything comes from the webhook service's own store (``HookStore``): the
same public registration view, ``stats`` and ``recent`` its REST API serves
(``GET /webhooks``, ``/webhooks/<id>/stats``, ``/deliveries/recent``), so the
monitor and the API never disagree. The monitor needs no webhook service
running to read them: the state lives in Redis.

Secrets never leave: the store's views carry ``has_secret`` only and show a
hook URL's password as ``***``; as a second guard any ``secret`` key is
dropped before the view is returned.
"""

from __future__ import annotations

from typing import Any

import redis

from webapp.webhooks.config import WebhookConfig
from webapp.webhooks.store import HookStore

#: Deliveries of the recent log shown (newest first).
RECENT_LIMIT = 50


def hook_store(client: redis.Redis, config: WebhookConfig | None = None) -> HookStore:
    """The store as the webhook service builds it; ``config`` defaults to the environment's
    (``EMP_WEBHOOK_*``), so effective retry settings match what the service uses."""
    return HookStore(client, config or WebhookConfig.from_env())


def _without_secrets(value: Any) -> Any:
    """``value`` with every ``secret`` key removed, at any depth."""
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if k != "secret"}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def _health(hook: dict[str, Any], stats: dict[str, Any]) -> str:
    """One word for the hook's state: inactive, disconnected, failing or connected."""
    if not hook["active"]:
        return "inactive"
    if stats["disconnected"]:
        return "disconnected"
    return "failing" if stats["consecutive_failures"] else "connected"


def webhooks_view(client: redis.Redis, limit: int = RECENT_LIMIT,
                  config: WebhookConfig | None = None) -> dict[str, Any]:
    """Hooks (oldest first) with health and stats, counts, and the recent deliveries.

    Shape: ``{hooks: [{...public registration, url masked, health, stats}],
    counts: {total, connected, failing, disconnected, inactive},
    recent_deliveries: [...HookStore.recent, newest first], limit}``.
    """
    store = hook_store(client, config)
    hooks = []
    counts = {"total": 0, "connected": 0, "failing": 0, "disconnected": 0, "inactive": 0}
    for hook in store.list():
        stats = store.stats(hook["id"])
        if stats is None:  # deleted between the two reads
            continue
        health = _health(hook, stats)
        counts["total"] += 1
        counts[health] += 1
        hooks.append({**hook, "health": health, "stats": stats})
    return _without_secrets({"hooks": hooks, "counts": counts,
                             "recent_deliveries": store.recent(limit), "limit": limit})


def reconnect(client: redis.Redis, hook_id: str) -> bool:
    """Reconnect a disconnected hook now (failures reset, its queue tried at once);
    False when there is no such hook. The service's ``POST /webhooks/<id>/reconnect``."""
    return hook_store(client).reconnect(hook_id)
