"""Key names of the webhook service, built in one place.

Every key shares the hash tag ``{wh}`` so the function library runs on Redis
Cluster; ``webhooks.lua`` derives the per-hook and per-delivery keys of a
claim from the same layout (its header repeats it). The prefix is outside
the ``emp:{<pool>}:`` form, so no pool name can collide with it.
"""

from __future__ import annotations

from capability_router.keys import PREFIX

#: Start of every webhook key.
WEBHOOK_PREFIX = f"{PREFIX}:webhooks:{{wh}}:"

#: hook id -> order number when created, oldest first (ZSET; see ORDER).
HOOKS = WEBHOOK_PREFIX + "hooks"
#: Bumped on every registration change, so readers know to reload (STRING).
VERSION = WEBHOOK_PREFIX + "version"
#: hook id -> ms its head delivery may be tried, or its lease expires (ZSET).
DUE = WEBHOOK_PREFIX + "due"
#: delivery id -> order number of its last change, every hook (ZSET).
RECENT = WEBHOOK_PREFIX + "recent"
#: The last order number of the history indexes, ``max(now ms, last + 1)`` (STRING).
ORDER = WEBHOOK_PREFIX + "order"
#: ``<instance>:<run id>`` of the one instance consuming the event log (STRING, expires).
CONSUMER = WEBHOOK_PREFIX + "consumer"
#: hook id -> ms its replaced secret stops signing, while one does (ZSET): the library
#: deletes that secret from the hook then, whether or not the hook is used.
ROTATIONS = WEBHOOK_PREFIX + "rotations"


def hook(hook_id: str) -> str:
    """Registration (HASH)."""
    return f"{WEBHOOK_PREFIX}hook:{hook_id}"


def state(hook_id: str) -> str:
    """Connection state, lease and counters (HASH)."""
    return f"{WEBHOOK_PREFIX}state:{hook_id}"


def queue(hook_id: str) -> str:
    """Delivery ids waiting, oldest first (LIST)."""
    return f"{WEBHOOK_PREFIX}queue:{hook_id}"


def log(hook_id: str) -> str:
    """delivery id -> order number when filed, the hook's history (ZSET)."""
    return f"{WEBHOOK_PREFIX}log:{hook_id}"


def delivery(delivery_id: str) -> str:
    """One delivery: body, status, counters (HASH)."""
    return f"{WEBHOOK_PREFIX}delivery:{delivery_id}"


def attempts(delivery_id: str) -> str:
    """Attempt records of a delivery as JSON, oldest first (LIST)."""
    return f"{WEBHOOK_PREFIX}attempts:{delivery_id}"


def throttle(hook_id: str, job_id: str) -> str:
    """ms of the last progress event of a job passed to a hook (STRING, expires)."""
    return f"{WEBHOOK_PREFIX}throttle:{hook_id}:{job_id}"
