"""The registration and monitoring API of the webhook service (admin tokens only).

Replies use the original's shape: ``{success, data}`` (lists add ``count`` or
``limit``); errors ``{success: false, error, field?}``.
"""

from __future__ import annotations

import json
import secrets as random_ids
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, request

from capability_router.functions import redis_now_ms
from capability_router.whole_numbers import whole_number
from webapp import strict_json
from webapp.auth import error, require_auth
from webapp.bodies import request_body
from webapp.outage import RETRY_AFTER_SECONDS, ungated
from webapp.webhooks.addresses import AddressRefused, UnresolvableHost
from webapp.webhooks.dispatcher import attempt_record, delivery_headers
from webapp.webhooks.events import ALIASES, EVENT_TYPES
from webapp.webhooks.schemas import RegistrationError, validate_create, validate_update
from webapp.webhooks.service import DeliveryService
from webapp.webhooks.signing import signing_secrets
from webapp.webhooks.urls import unmasked

bp = Blueprint("webhooks", __name__)

#: Largest ``limit`` of the listing endpoints.
MAX_LIMIT = 1000
#: What ``?status=`` of a hook's deliveries may ask for (a misspelt one listed nothing).
DELIVERY_STATUSES = ("queued", "retrying", "delivered", "failed", "refused")


def service() -> DeliveryService:
    return current_app.extensions["emp_webhooks"]


class NotJson(RegistrationError):
    """A body sent with another Content-Type than JSON (415, as the API answers)."""

    status = 415


def _bad(exc: RegistrationError) -> Any:
    return error(getattr(exc, "status", 400), str(exc),
                 **({"field": exc.field} if exc.field else {}))


def _body() -> Any:
    """The request's JSON body, parsed by the one strict parser (``webapp.strict_json``);
    None when it is empty. RegistrationError naming the problem; NotJson for a body
    sent as something else (``curl -d`` sends a form: it was "must be a JSON object")."""
    data = request_body()
    if not data:
        return None
    if not request.is_json:
        raise NotJson("", "Content-Type must be application/json")
    try:
        return strict_json.loads(data, max_bytes=current_app.config["MAX_CONTENT_LENGTH"])
    except strict_json.JsonRefused as exc:
        raise RegistrationError("", f"the body is not valid JSON: {exc}") from None


def _missing(hook_id: str) -> Any:
    return error(404, f"webhook {hook_id} not found")


def check_destination(url: str) -> None:
    """Refuse, at registration, a URL whose host is or resolves to a refused address."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        service().policy.resolve(parts.hostname or "", port)
    except AddressRefused as exc:
        raise RegistrationError("url", f"refused: {exc}") from None
    except UnresolvableHost as exc:
        raise RegistrationError("url", str(exc)) from None


def _one(name: str) -> str | None:
    """The query parameter ``name``: RegistrationError when repeated (``?status=a&status=b``
    used the first value alone, without a word)."""
    given = request.args.getlist(name)
    if len(given) > 1:
        raise RegistrationError(name, f"given {len(given)} times; send it once (it takes "
                                      "one value)")
    return given[0] if given else None


def _limit(default: int) -> int:
    text = _one("limit")
    if text is None:
        return default
    value = whole_number(text, 6)  # '²' was a 500, '٣' listed 3
    if value is None or not 1 <= value <= MAX_LIMIT:
        raise RegistrationError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return value


@bp.get("/health")
@ungated
def health() -> Any:
    """Liveness for load balancers and the test fixtures (no token needed); 503 with
    ``Retry-After`` while Redis does not answer, noted as the other routes' failures are
    (one log line per outage)."""
    healthy, details = service().health()
    outage = current_app.extensions["emp_outage"]
    failure = details.pop("error", None)
    body = {"status": "ok" if healthy else "error", "service": "emp-webhooks", **details}
    if healthy:
        outage.succeeded()
        return jsonify(body), 200
    outage.failed(failure)
    return jsonify(body), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


@bp.post("/webhooks")
@require_auth(admin=True)
def create() -> Any:
    """Register a hook; 201 with its secret (generated when not given), shown only here."""
    try:
        doc = validate_create(_body())
        check_destination(doc["url"])
    except RegistrationError as exc:
        return _bad(exc)
    return jsonify(success=True, data=service().store.create(doc)), 201


@bp.get("/webhooks")
@require_auth(admin=True)
def list_hooks() -> Any:
    hooks = service().store.list()
    return jsonify(success=True, data=hooks, count=len(hooks))


@bp.get("/webhooks/<hook_id>")
@require_auth(admin=True)
def get_hook(hook_id: str) -> Any:
    hook = service().store.get(hook_id)
    return jsonify(success=True, data=hook) if hook else _missing(hook_id)


@bp.put("/webhooks/<hook_id>")
@require_auth(admin=True)
def update_hook(hook_id: str) -> Any:
    """Change some fields (the others stay); the result is validated as a whole. The URL
    as shown (its password ``***``) stands for the stored one: a hook read and sent back
    keeps its receiver's password."""
    store = service().store
    current = store.registration(hook_id)
    if current is None:
        return _missing(hook_id)
    try:
        body = _body()
        if isinstance(body, dict) and isinstance(body.get("url"), str):
            body["url"] = unmasked(body["url"], current["url"])
        validate_update(body, current)
        if "url" in body:
            check_destination(body["url"])
    except RegistrationError as exc:
        return _bad(exc)
    hook = store.update(hook_id, body)
    return jsonify(success=True, data=hook) if hook else _missing(hook_id)


@bp.delete("/webhooks/<hook_id>")
@require_auth(admin=True)
def delete_hook(hook_id: str) -> Any:
    if not service().store.delete(hook_id):
        return _missing(hook_id)
    return jsonify(success=True, message=f"webhook {hook_id} deleted")


@bp.get("/webhooks/<hook_id>/stats")
@require_auth(admin=True)
def stats(hook_id: str) -> Any:
    found = service().store.stats(hook_id)
    return jsonify(success=True, data=found) if found else _missing(hook_id)


@bp.get("/webhooks/<hook_id>/deliveries")
@require_auth(admin=True)
def deliveries(hook_id: str) -> Any:
    """The hook's deliveries, newest first, each with its attempts (``?limit=&status=``)."""
    store = service().store
    if store.get(hook_id) is None:
        return _missing(hook_id)
    try:
        status = _one("status") or None
        limit = _limit(50)
        if status is not None and status not in DELIVERY_STATUSES:
            raise RegistrationError("status", f"unknown delivery status {status!r} (known: "
                                    f"{', '.join(DELIVERY_STATUSES)})")
    except RegistrationError as exc:
        return _bad(exc)
    found = store.deliveries(hook_id, limit, status)
    return jsonify(success=True, data=found, limit=limit)


@bp.post("/webhooks/<hook_id>/reconnect")
@require_auth(admin=True)
def reconnect(hook_id: str) -> Any:
    """Reconnect a disconnected hook now: failures reset, its queue is tried at once."""
    store = service().store
    if not store.reconnect(hook_id):
        return _missing(hook_id)
    return jsonify(success=True, message=f"webhook {hook_id} reconnected",
                   data=store.stats(hook_id))


@bp.get("/deliveries/recent")
@require_auth(admin=True)
def recent() -> Any:
    try:
        limit = _limit(100)
    except RegistrationError as exc:
        return _bad(exc)
    return jsonify(success=True, data=service().store.recent(limit), limit=limit)


def _test_event_type(body: Any) -> str | None:
    """The ``event_type`` a test call's body asks for (None: the hook's first event).

    The body is optional; given, it is an object whose only field is a string
    ``event_type`` (a list or an object there was a 500, unknown fields were ignored).
    """
    if body is None:
        return None
    if not isinstance(body, dict):
        raise RegistrationError("", "the body must be a JSON object")
    extra = sorted(set(body) - {"event_type"})
    if extra:
        raise RegistrationError(extra[0], "unknown field (known: event_type)")
    asked = body.get("event_type")
    if asked is not None and not isinstance(asked, str):
        raise RegistrationError("event_type", "must be a string naming an event type")
    return asked or None


@bp.post("/webhooks/<hook_id>/test")
@require_auth(admin=True)
def test_hook(hook_id: str) -> Any:
    """Send one sample event now, outside the queue (``{"event_type": ...}`` optional).

    The attempt is kept in the hook's deliveries (marked ``test``) but does
    not count towards its failures or order. 200 when the receiver answered
    2xx, else 502 with what happened.
    """
    svc = service()
    raw = svc.store.raw(hook_id)
    if not raw:
        return _missing(hook_id)
    try:
        asked = _test_event_type(_body())
    except RegistrationError as exc:
        return _bad(exc)
    event_type = ALIASES.get(asked, asked) if asked else json.loads(raw["events"])[0]
    if event_type not in EVENT_TYPES:
        return error(400, f"event_type: unknown event type {asked!r} "
                          f"(known: {', '.join(EVENT_TYPES)})", field="event_type")
    suffix = random_ids.token_hex(8)
    event = {
        "event_type": event_type, "event_id": f"test:{suffix}",
        "timestamp": redis_now_ms(svc.client), "webhook_id": hook_id,
        "data": {"job_id": f"test_job_{suffix}", "job_type": "test", "priority": 50,
                 "customer_id": None, "workflow_id": None, "worker_id": "test_worker",
                 "machine_id": "test_machine", "message": "test event from EMP webhooks"},
        "metadata": {"test_event": True},
    }
    body = json.dumps(event, separators=(",", ":"))
    delivery_id = f"dlv_test_{suffix}"
    headers = delivery_headers(hook_id, signing_secrets(raw, event["timestamp"]), delivery_id,
                               event_type, event["event_id"], body, 1)
    result = svc.sender.post(raw["url"], body.encode(), headers)
    kind = "delivered" if result.status is not None and 200 <= result.status < 300 else (
        "refused" if result.refused else "failed")
    record = attempt_record(result, kind, event["timestamp"])
    svc.store.record_test(hook_id, delivery_id, event, body, record)
    data = {"delivery_id": delivery_id, "event": event, "attempt": record}
    if kind == "delivered":
        return jsonify(success=True, message="test webhook delivered", data=data)
    return error(502, f"test webhook not delivered: {record['error_message']}", data=data)
