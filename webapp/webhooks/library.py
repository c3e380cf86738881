"""The webhook function library (``webhooks.lua``): loading it, one wrapper per function.

Loaded like the queue library: ``ensure_library`` replaces the server's copy
when its stamped version differs, so any process may call it at start, and a
call that finds the library missing (a Redis restart without persistence)
loads it and retries once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis

from capability_router.libraries import load_unless_newer, stamped_source
from webapp.webhooks import keys


@lru_cache(maxsize=1)
def library_source() -> str:
    """The Lua source with its VERSION stamped by a digest of the text."""
    return stamped_source('webapp.webhooks', 'webhooks.lua')


def ensure_library(client: redis.Redis) -> bool:
    """Load the library unless the server (every master of a cluster) has this version
    or a newer release (see ``capability_router.libraries``); True if loaded."""
    return load_unless_newer(client, library_source(), 'emp_wh_version')


def _pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass
class Claim:
    """A hook leased to one dispatcher, with its head delivery."""

    hook_id: str
    token: str
    delivery_id: str
    delivery: dict[str, str]
    hook: dict[str, str]
    #: Redis' clock when it was claimed: what judges a secret rotation's overlap.
    now_ms: int


@dataclass
class Outcome:
    """What a dispatcher learnt from one attempt, for ``finish``."""

    #: delivered | retry | failed | refused | skip | park
    kind: str
    delay_ms: int = 0
    attempt: dict[str, Any] | None = None
    status_code: int | None = None
    error: str = ""


class WebhookFunctions:
    """Named wrappers of the library's functions.

    :param client: a redis-py client with ``decode_responses=True``.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _call(self, name: str, keys_: list[str], args: list[Any]) -> Any:
        try:
            return self.client.fcall(name, len(keys_), *keys_, *args)
        except redis.ResponseError as exc:
            if "Function not found" not in str(exc):
                raise
        ensure_library(self.client)
        return self.client.fcall(name, len(keys_), *keys_, *args)

    @staticmethod
    def enqueue_call(
        delivery_id: str, hook_id: str, event_id: str, event_type: str, job_id: str,
        event_ms: int, body: str, throttle_ms: int, max_backlog: int, history: int,
        recent_max: int,
    ) -> tuple[list[str], list[Any]]:
        """(KEYS, ARGV) of ``emp_wh_enqueue``, for pipelines that file many deliveries."""
        k = [keys.DUE, keys.delivery(delivery_id), keys.queue(hook_id), keys.log(hook_id),
             keys.state(hook_id), keys.RECENT, keys.throttle(hook_id, job_id or "-"),
             keys.hook(hook_id), keys.ORDER]
        a = [delivery_id, hook_id, event_id, event_type, job_id, event_ms, body, throttle_ms,
             max_backlog, history, recent_max]
        return k, a

    def enqueue_many(self, calls: list[tuple[list[str], list[Any]]]) -> list[str]:
        """Run many ``enqueue_call`` results in one round trip; their replies in order."""
        if not calls:
            return []
        for attempt in (1, 2):
            with self.client.pipeline(transaction=False) as pipe:
                for k, a in calls:
                    pipe.fcall("emp_wh_enqueue", len(k), *k, *a)
                replies = pipe.execute(raise_on_error=False)
            missing = [r for r in replies if isinstance(r, redis.ResponseError)]
            if not missing:
                return replies
            if attempt == 1 and all("Function not found" in str(r) for r in missing):
                ensure_library(self.client)
                continue
            raise missing[0]
        return replies

    def claim(self, lease_ms: int, token: str) -> Claim | int:
        """Lease the hook due soonest; else ms until one is due (-1: none)."""
        reply = self._call("emp_wh_claim", [keys.DUE], [lease_ms, token])
        if reply[0] == 0:
            return int(reply[1])
        return Claim(reply[1], token, reply[2], _pairs(reply[3]), _pairs(reply[4]),
                     int(reply[5]))

    def finish(self, claim: Claim, outcome: Outcome, disconnect_after: int, reconnect_ms: int,
               history_ms: int, recent_max: int, continue_lease_ms: int = 0) -> Claim | str:
        """Record an attempt's outcome; the next delivery of the same hook when
        ``continue_lease_ms`` asks for it and one is due now, else the reply word."""
        hook_id, delivery_id = claim.hook_id, claim.delivery_id
        k = [keys.DUE, keys.queue(hook_id), keys.state(hook_id), keys.delivery(delivery_id),
             keys.attempts(delivery_id), keys.RECENT, keys.hook(hook_id), keys.ORDER]
        a = [hook_id, claim.token, delivery_id, outcome.kind, int(outcome.delay_ms),
             json.dumps(outcome.attempt) if outcome.attempt is not None else "",
             disconnect_after, reconnect_ms, history_ms, recent_max, continue_lease_ms,
             "" if outcome.status_code is None else outcome.status_code, outcome.error[:500]]
        reply = self._call("emp_wh_finish", k, a)
        if reply[0] == "next":
            return Claim(hook_id, claim.token, reply[1], _pairs(reply[2]), _pairs(reply[3]),
                         int(reply[4]))
        return reply[0]

    def record(self, hook_id: str, delivery_id: str, fields: dict[str, Any],
               attempt: dict[str, Any], history_ms: int, recent_max: int) -> bool:
        """Keep a finished delivery sent outside the queue in the hook's history;
        False (nothing written) if the hook does not exist."""
        k = [keys.DUE, keys.delivery(delivery_id), keys.attempts(delivery_id),
             keys.log(hook_id), keys.RECENT, keys.ORDER, keys.hook(hook_id)]
        flat = [x for pair in fields.items() for x in pair]
        return bool(self._call("emp_wh_record", k, [delivery_id, json.dumps(attempt),
                                                    history_ms, recent_max, *flat]))

    def create(self, hook_id: str, fields: dict[str, Any]) -> int:
        """Store a new registration (connected, listed last); its created_at in ms."""
        return int(self._call("emp_wh_create", *self.create_call(hook_id, fields)))

    @staticmethod
    def create_call(hook_id: str, fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
        """(KEYS, ARGV) of ``emp_wh_create``: for ``create``, and a test's pipeline that
        registers hooks in one round trip (many in one ms)."""
        k = [keys.DUE, keys.hook(hook_id), keys.state(hook_id), keys.HOOKS, keys.VERSION,
             keys.ORDER]
        return k, [hook_id, *(x for pair in fields.items() for x in pair)]

    def update(self, hook_id: str, fields: dict[str, str]) -> bool:
        """Write registration fields and reschedule the hook; False if it does not exist."""
        k = [keys.DUE, keys.state(hook_id), keys.queue(hook_id), keys.hook(hook_id),
             keys.VERSION]
        flat = [x for pair in fields.items() for x in pair]
        return bool(self._call("emp_wh_update", k, [hook_id, *flat]))

    def reconnect(self, hook_id: str) -> bool:
        """Mark the hook connected and its head due now; False if it does not exist."""
        k = [keys.DUE, keys.state(hook_id), keys.queue(hook_id), keys.hook(hook_id)]
        return bool(self._call("emp_wh_reconnect", k, [hook_id]))

    def delete(self, hook_id: str) -> bool:
        """Delete a hook with its queue and history; False if it does not exist."""
        k = [keys.DUE, keys.HOOKS, keys.hook(hook_id), keys.state(hook_id), keys.queue(hook_id),
             keys.log(hook_id), keys.VERSION]
        return bool(self._call("emp_wh_delete", k, [hook_id]))

    def lead(self, token: str, ttl_ms: int, instance_prefix: str) -> int:
        """Take or keep the right to consume: 2 newly taken, 1 kept, 0 held elsewhere."""
        return int(self._call("emp_wh_lead", [keys.DUE, keys.CONSUMER],
                              [token, ttl_ms, instance_prefix]))

    def unlead(self, token: str) -> bool:
        """Give the right to consume up, if ``token`` holds it."""
        return bool(self._call("emp_wh_unlead", [keys.DUE, keys.CONSUMER], [token]))

    def release(self, token_prefix: str) -> int:
        """Release the leases an earlier run of this instance held; how many."""
        return int(self._call("emp_wh_release", [keys.DUE], [token_prefix]))
