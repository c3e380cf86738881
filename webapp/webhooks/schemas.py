"""JSON schemas of webhook registrations, and the checks a schema cannot express.

Every failure raises ``RegistrationError`` naming the field (``events[2]``,
``filters.priorities``, ``retry_config.max_delay_ms``), so a client learns
what to fix and nothing is written.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from capability_router.jobspec import NAME_RE
from webapp.schema_words import message
from webapp.webhooks.events import ALIASES, EVENT_TYPES

_NAMES = {"type": "array", "maxItems": 1000,
          "items": {"type": "string", "minLength": 1, "maxLength": 256}}
#: Customer and workflow ids, as a job's (``capability_router.jobspec.NAME_RE``): a name
#: no job can carry made a hook that never fired, without a word.
_IDS = {"type": "array", "maxItems": 1000,
        "items": {"type": "string", "pattern": NAME_RE.pattern}}
_PRIORITY = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100},
                       {"type": "string", "pattern": "^(100|[1-9]?[0-9])$"}]}
_PRIORITY_BOUND = {"type": "integer", "minimum": 0, "maximum": 100}

#: Filters: every key given must hold (AND); a list admits any of its values
#: (OR). ``priorities`` lists exact priorities; ``min_priority`` and
#: ``max_priority`` bound them, inclusive. ``job_priorities`` is the original's
#: name for ``priorities``.
FILTERS_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "job_types": _NAMES, "machine_ids": _NAMES, "worker_ids": _NAMES,
        "customer_ids": _IDS, "workflow_ids": _IDS,
        "priorities": {"type": "array", "maxItems": 101, "items": _PRIORITY},
        "job_priorities": {"type": "array", "maxItems": 101, "items": _PRIORITY},
        "min_priority": _PRIORITY_BOUND, "max_priority": _PRIORITY_BOUND,
    },
}

RETRY_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "initial_delay_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000},
        "backoff_multiplier": {"type": "number", "minimum": 1, "maximum": 10},
        "max_delay_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
        "give_up_after_ms": {"type": "integer", "minimum": 1, "maximum": 604_800_000},
    },
}

_PROPERTIES = {
    "url": {"type": "string", "minLength": 1, "maxLength": 2048},
    "events": {"type": "array", "minItems": 1, "maxItems": 64, "uniqueItems": True,
               "items": {"type": "string", "enum": [*EVENT_TYPES, *ALIASES]}},
    "secret": {"type": "string", "minLength": 1, "maxLength": 1024},
    "filters": FILTERS_SCHEMA,
    "retry_config": RETRY_SCHEMA,
    "active": {"type": "boolean"},
}

#: ``POST /webhooks``.
CREATE_SCHEMA = {"type": "object", "additionalProperties": False,
                 "required": ["url", "events"], "properties": _PROPERTIES}
#: ``PUT /webhooks/<id>``: any subset, at least one field.
UPDATE_SCHEMA = {"type": "object", "additionalProperties": False, "minProperties": 1,
                 "properties": _PROPERTIES}

_CREATE = Draft202012Validator(CREATE_SCHEMA)
_UPDATE = Draft202012Validator(UPDATE_SCHEMA)


class RegistrationError(ValueError):
    """A registration body that cannot be stored; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(error: ValidationError) -> RegistrationError:
    field = _path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in known)
        name = f"{field}.{extra[0]}" if field else extra[0]
        return RegistrationError(name, f"unknown field (known: {', '.join(sorted(known))})")
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return RegistrationError(missing, "is required")
    if error.validator == "enum" and field.startswith("events"):
        return RegistrationError(
            field, f"unknown event type {error.instance!r} (known: {', '.join(EVENT_TYPES)})")
    if field.startswith(("filters.priorities[", "filters.job_priorities[")):
        return RegistrationError(field, "a priority is an integer from 0 to 100")
    return RegistrationError(field, message(error))


def check_url(url: str) -> None:
    """An absolute http(s) URL with a host; RegistrationError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RegistrationError("url", f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RegistrationError("url", "must be an http:// or https:// URL")
    if not parts.hostname:
        raise RegistrationError("url", "has no host")
    if port == 0:
        raise RegistrationError("url", "port 0 is not valid")
    if any(ch.isspace() for ch in url):
        raise RegistrationError("url", "contains whitespace")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        # Not valid in a URL; sent percent-encoded, the receiver saw another path.
        raise RegistrationError("url", "contains a control character")


def check_secret(secret: str) -> None:
    """A ``whsec_`` secret must be base64 (Standard Webhooks) of 16 to 512 bytes."""
    if not secret.startswith("whsec_"):
        return
    text = secret[len("whsec_"):]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RegistrationError(
            "secret", "a whsec_ secret must be base64 (Standard Webhooks); "
                      "use another prefix for a plain-text secret") from None
    if not 16 <= len(key) <= 512:
        raise RegistrationError("secret", "a whsec_ secret must decode to 16-512 bytes")


def _check_semantics(doc: dict[str, Any]) -> None:
    check_url(doc["url"])
    if "secret" in doc:
        check_secret(doc["secret"])
    retry = doc.get("retry_config") or {}
    if "initial_delay_ms" in retry and "max_delay_ms" in retry and \
            retry["max_delay_ms"] < retry["initial_delay_ms"]:
        raise RegistrationError("retry_config.max_delay_ms",
                                "must be at least retry_config.initial_delay_ms")
    filters = doc.get("filters") or {}
    if "priorities" in filters and "job_priorities" in filters:
        raise RegistrationError("filters.job_priorities",
                                "give priorities or job_priorities, not both")
    if filters.get("min_priority", 0) > filters.get("max_priority", 100):
        raise RegistrationError("filters.max_priority", "must be at least filters.min_priority")


def normalize_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Filters as stored: ``job_priorities`` renamed, priorities as integers."""
    out = dict(filters)
    if "job_priorities" in out:
        out["priorities"] = out.pop("job_priorities")
    if "priorities" in out:
        out["priorities"] = sorted({int(p) for p in out["priorities"]})
    return out


def validate_create(body: Any) -> dict[str, Any]:
    """A ``POST /webhooks`` body, checked; RegistrationError names the first problem."""
    if not isinstance(body, dict):
        raise RegistrationError("", "the body must be a JSON object")
    error = best_match(_CREATE.iter_errors(body))
    if error is not None:
        raise _explain(error)
    _check_semantics(body)
    return body


def validate_update(body: Any, current: dict[str, Any]) -> dict[str, Any]:
    """A ``PUT`` body checked alone and merged into ``current`` (the stored
    registration, without its secret); returns the merge."""
    if not isinstance(body, dict):
        raise RegistrationError("", "the body must be a JSON object")
    error = best_match(_UPDATE.iter_errors(body))
    if error is not None:
        raise _explain(error)
    merged = {**current, **body}
    _check_semantics(merged)
    return merged
