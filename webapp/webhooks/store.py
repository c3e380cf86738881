"""Registrations and delivery records in Redis, as the HTTP API reads and writes them.

A registration keeps the ``retry_config`` the client gave; the effective one
(over the service defaults) is shown. Secrets are written, never read back
by the API: a listing says ``has_secret`` only. A URL's password is shown as
``***`` (``urls.py``); deliveries use the URL as registered.
"""

from __future__ import annotations

import json
import secrets as random_ids
from typing import Any

import redis

from capability_router.functions import redis_now_ms
from webapp.webhooks import keys
from webapp.webhooks.config import WebhookConfig
from webapp.webhooks.events import canonical_events
from webapp.webhooks.library import WebhookFunctions
from webapp.webhooks.schemas import normalize_filters
from webapp.webhooks.signing import generate_secret
from webapp.webhooks.urls import shown_url

#: Delivery record fields shown as integers.
_INT_FIELDS = ("attempts", "created_at", "next_attempt_at", "last_attempt_at", "finished_at",
               "last_status_code")
#: Delivery record fields shown, in this order.
_DELIVERY_FIELDS = ("id", "webhook_id", "event_id", "event_type", "job_id", "status",
                    "attempts", "created_at", "next_attempt_at", "last_attempt_at",
                    "finished_at", "last_status_code", "last_error")
#: Attempt record fields shown, in this order.
_ATTEMPT_FIELDS = ("attempt_number", "timestamp", "success", "outcome", "response_status",
                   "latency_ms", "response_body", "error_message", "next_retry_at", "address")
#: State counters shown by the stats endpoint.
_COUNTERS = ("queued", "delivered", "failed", "refused", "dropped", "throttled", "attempts")


def new_hook_id() -> str:
    return "wh_" + random_ids.token_hex(12)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _overlap_end(raw: dict[str, str], now_ms: int) -> int | None:
    """When a replaced secret stops signing (ms, Redis' clock), while it still does at
    ``now_ms``; else None (the library deletes it then: ``webhooks.lua``)."""
    until = _int(raw.get("previous_secret_until")) if raw.get("previous_secret") else None
    return until if until is not None and until > now_ms else None


class HookStore:
    """Reads and writes of registrations, stats and delivery history.

    :param client: Redis client (``decode_responses=True``).
    :param config: service tunables (retry defaults, history time).
    """

    def __init__(self, client: redis.Redis, config: WebhookConfig) -> None:
        self.client = client
        self.config = config
        self.functions = WebhookFunctions(client)

    # -- registrations ------------------------------------------------------

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a validated registration; returns it with its secret (shown once)."""
        hook_id = new_hook_id()
        secret = doc.get("secret") or generate_secret()
        fields = {"active": "1", "filters": "{}", "retry_config": "{}", **self._fields(doc)}
        self.functions.create(hook_id, {**fields, "secret": secret})
        return {**self.get(hook_id), "secret": secret}

    @staticmethod
    def _fields(doc: dict[str, Any]) -> dict[str, Any]:
        """Registration fields as stored (JSON text for the structured ones)."""
        fields: dict[str, Any] = {}
        if "url" in doc:
            fields["url"] = doc["url"]
        if "events" in doc:
            fields["events"] = json.dumps(canonical_events(doc["events"]))
        if "filters" in doc:
            fields["filters"] = json.dumps(normalize_filters(doc["filters"] or {}))
        if "retry_config" in doc:
            fields["retry_config"] = json.dumps(doc["retry_config"] or {})
        if "active" in doc:
            fields["active"] = "1" if doc["active"] else "0"
        if doc.get("secret"):
            fields["secret"] = doc["secret"]
        return fields

    def raw(self, hook_id: str) -> dict[str, str]:
        return self.client.hgetall(keys.hook(hook_id))

    def registration(self, hook_id: str) -> dict[str, Any] | None:
        """The registration as a client wrote it (no secret, the URL unmasked: never
        shown), for merging a PUT."""
        raw = self.raw(hook_id)
        if not raw:
            return None
        return {"url": raw["url"], "events": json.loads(raw["events"]),
                "filters": json.loads(raw.get("filters") or "{}"),
                "retry_config": json.loads(raw.get("retry_config") or "{}"),
                "active": raw.get("active", "1") != "0"}

    def _public(self, raw: dict[str, str], state: dict[str, str], now_ms: int
                ) -> dict[str, Any]:
        retry = {**self.config.retry_defaults(), **json.loads(raw.get("retry_config") or "{}")}
        return {
            "id": raw["id"], "url": shown_url(raw["url"]), "events": json.loads(raw["events"]),
            "filters": json.loads(raw.get("filters") or "{}"), "retry_config": retry,
            "active": raw.get("active", "1") != "0",
            "disconnected": state.get("connected") == "0",
            "consecutive_failures": _int(state.get("consecutive_failures")) or 0,
            "last_failure_at": _int(state.get("last_failure_at")),
            "last_success_at": _int(state.get("last_success_at")),
            "has_secret": bool(raw.get("secret")),
            "previous_secret_until": _overlap_end(raw, now_ms),
            "created_at": _int(raw.get("created_at")), "updated_at": _int(raw.get("updated_at")),
        }

    def get(self, hook_id: str) -> dict[str, Any] | None:
        """The public view of a hook (no secret); None when unknown."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.hook(hook_id))
            pipe.hgetall(keys.state(hook_id))
            raw, state = pipe.execute()
        # TIME apart: a cluster pipeline refuses it.
        return self._public(raw, state, redis_now_ms(self.client)) if raw else None

    def list(self) -> list[dict[str, Any]]:
        """Every hook, oldest first."""
        ids = self.client.zrange(keys.HOOKS, 0, -1)
        with self.client.pipeline(transaction=False) as pipe:
            for hook_id in ids:
                pipe.hgetall(keys.hook(hook_id))
                pipe.hgetall(keys.state(hook_id))
            rows = pipe.execute()
        now = redis_now_ms(self.client)
        return [self._public(raw, state, now)
                for raw, state in zip(rows[::2], rows[1::2], strict=True) if raw]

    def update(self, hook_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Apply validated changes; None when the hook does not exist. A new secret
        keeps the one it replaces signing beside it for ``secret_overlap_seconds``
        (Redis' clock); the library deletes it from the hook then."""
        fields = self._fields(changes)
        now = redis_now_ms(self.client)
        fields["updated_at"] = now
        old = self.client.hget(keys.hook(hook_id), "secret") if "secret" in fields else None
        if old and old != fields["secret"]:
            fields["previous_secret"] = old
            fields["previous_secret_until"] = now + int(self.config.secret_overlap_seconds * 1000)
        if not self.functions.update(hook_id, {k: str(v) for k, v in fields.items()}):
            return None
        return self.get(hook_id)

    def delete(self, hook_id: str) -> bool:
        return self.functions.delete(hook_id)

    def reconnect(self, hook_id: str) -> bool:
        return self.functions.reconnect(hook_id)

    # -- state and history --------------------------------------------------

    def stats(self, hook_id: str) -> dict[str, Any] | None:
        """Counters and connection state of a hook; None when unknown."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(keys.hook(hook_id), "active")
            pipe.hgetall(keys.state(hook_id))
            pipe.llen(keys.queue(hook_id))
            pipe.lindex(keys.queue(hook_id), 0)
            active, state, waiting, head = pipe.execute()
        if active is None:
            return None
        counts = {name: _int(state.get(name)) or 0 for name in _COUNTERS}
        disconnected = state.get("connected") == "0"
        head_status = self.client.hget(keys.delivery(head), "status") if head else None
        return {
            "webhook_id": hook_id,
            "status": "inactive" if active == "0" else
                      ("disconnected" if disconnected else "connected"),
            "active": active != "0", "disconnected": disconnected,
            "consecutive_failures": _int(state.get("consecutive_failures")) or 0,
            "disconnected_at": _int(state.get("disconnected_at")),
            "reconnect_at": _int(state.get("reconnect_at")),
            "total_deliveries": counts["delivered"] + counts["failed"] + counts["refused"],
            "successful_deliveries": counts["delivered"],
            "failed_deliveries": counts["failed"],
            "refused_deliveries": counts["refused"],
            "pending_deliveries": waiting,
            "retry_queue_size": 1 if head_status == "retrying" else 0,
            "in_flight": bool(state.get("lease")),
            "dropped_events": counts["dropped"],
            "throttled_events": counts["throttled"],
            "queued_events": counts["queued"],
            "total_attempts": counts["attempts"],
            "last_delivery_at": _int(state.get("last_attempt_at")),
            "last_success_at": _int(state.get("last_success_at")),
            "last_failure_at": _int(state.get("last_failure_at")),
            "last_error": state.get("last_error") or None,
        }

    def _deliveries(self, ids: list[str]) -> list[dict[str, Any]]:
        with self.client.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(keys.delivery(delivery_id))
                pipe.lrange(keys.attempts(delivery_id), 0, -1)
            rows = pipe.execute()
        out = []
        for record, attempts in zip(rows[::2], rows[1::2], strict=True):
            if not record:
                continue
            view: dict[str, Any] = {name: record.get(name) for name in _DELIVERY_FIELDS}
            for name in _INT_FIELDS:
                view[name] = _int(view[name])
            view["last_error"] = view["last_error"] or None
            view["test"] = record.get("test") == "1"
            try:
                view["payload"] = json.loads(record.get("body") or "null")
            except ValueError:
                view["payload"] = record.get("body")
            history = [json.loads(a) for a in attempts]
            view["attempt_history"] = [
                {name: a.get(name) for name in _ATTEMPT_FIELDS} for a in history]
            out.append(view)
        return out

    def deliveries(self, hook_id: str, limit: int, status: str | None = None
                   ) -> list[dict[str, Any]]:
        """A hook's deliveries, newest first (queued ones included)."""
        ids = self.client.zrevrange(keys.log(hook_id), 0, (limit if not status else 10 * limit) - 1)
        found = self._deliveries(ids)
        if status:
            found = [d for d in found if d.get("status") == status]
        return found[:limit]

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """Deliveries of every hook, most recently changed first."""
        return self._deliveries(self.client.zrevrange(keys.RECENT, 0, limit - 1))

    def record_test(self, hook_id: str, delivery_id: str, event: dict[str, Any], body: str,
                    attempt: dict[str, Any]) -> None:
        """Keep a test delivery (sent directly, outside the queue) in the history."""
        now = redis_now_ms(self.client)
        status = "delivered" if attempt["success"] else "failed"
        record = {
            "id": delivery_id, "webhook_id": hook_id, "event_id": event["event_id"],
            "event_type": event["event_type"], "job_id": event["data"].get("job_id", ""),
            "body": body, "status": status, "attempts": 1, "created_at": now,
            "last_attempt_at": now, "finished_at": now, "test": "1",
            "last_status_code": "" if attempt["response_status"] is None
            else attempt["response_status"],
            "last_error": attempt.get("error_message") or "",
        }
        self.functions.record(hook_id, delivery_id, record, {**attempt, "attempt_number": 1},
                              int(self.config.history_seconds * 1000), self.config.recent_max)
