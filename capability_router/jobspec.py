"""Job submissions: validate the original's job fields and derive the class.

A ``JobSpec`` is built once by the producer; the Celery message carries its
``header()`` so the transport's publish path only forwards it to the enqueue
function. Bad input raises ``InvalidJob`` naming the field, before anything
is written.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kombu.utils import json as kombu_json

from capability_router.env import env_int
from capability_router.errors import InvalidJob
from capability_router.keys import DEFAULT_NAMESPACE, check_namespace, check_new_pool
from capability_router.requirements import (
    canonical_json,
    family_of,
    normalize_requirements,
    text_signature,
)
from capability_router.whole_numbers import whole_number

#: Largest accepted payload + ctx, in bytes of JSON (``EMP_MAX_PAYLOAD_BYTES``).
MAX_PAYLOAD_BYTES = env_int("EMP_MAX_PAYLOAD_BYTES", 1024 * 1024)

#: Message header that carries the job spec from producer to transport.
HEADER = "emp"

SERVICE_ALIASES = ("service_required", "job_type", "type")

#: Record fields the router and duration model add (``capability_router.routing``).
ROUTING_FIELDS = ("routing", "duration_key", "work_units", "predicted_ms")
#: What a customer or workflow id may be (a job's, a worker's allowed/denied customers).
NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
#: NAME_RE in words, for the messages that refuse a name.
NAME_RULE = "1-128 letters, digits or '_.:-'"


def _name(field_name: str, value: Any, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidJob(f"{field_name} is required")
        return None
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidJob(
            f"{field_name} must be {NAME_RULE}, got {value!r}"
        )
    return value


def _int(field_name: str, value: Any, low: int, high: int, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        # ASCII digits, one sign ('²' and "--5" passed a strip of dashes, then int() raised)
        whole = whole_number(value.strip(), 18, signed=True) if isinstance(value, str) else None
        if whole is not None:
            value = whole
        else:
            raise InvalidJob(f"{field_name} must be an integer {low}-{high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidJob(f"{field_name} must be between {low} and {high}, got {value}")
    return value


def _json_text(field_name: str, value: Any) -> str:
    """``value`` as JSON the way Celery's json serializer writes a message (datetime, date,
    UUID and Decimal included), so what Celery would send is accepted; never NaN or
    Infinity, which are not JSON: every reader of the record parses it."""
    try:
        return kombu_json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"{field_name} must be JSON-serializable (no NaN or Infinity): "
                         f"{exc}") from None
    except RecursionError:  # nested past the interpreter's stack: was a bare RecursionError
        raise InvalidJob(f"{field_name} must be JSON-serializable: it nests too deep to "
                         "encode (the API takes 64 levels)") from None


#: Effective times the order score holds: (100 - priority) * 1e13 + ms (``emp.lua``),
#: so from 1e13 ms (the year 2286) on a time would spill into lower priorities.
TIME_MS_LIMIT = 10**13


def _time_ms(field_name: str, value: Any) -> int | None:
    """Accept epoch seconds or milliseconds, or an ISO-8601 timestamp, from 1970 to
    ``TIME_MS_LIMIT`` (a microsecond or nanosecond stamp is refused, not misread)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidJob(f"{field_name} must be epoch ms or ISO-8601, got {value!r}")
        ms = int(value if value > 1e11 else value * 1000)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidJob(f"{field_name} must be epoch ms or ISO-8601, got {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ms = int(parsed.timestamp() * 1000)
    else:
        raise InvalidJob(f"{field_name} must be epoch ms or ISO-8601, got {value!r}")
    if not 0 <= ms < TIME_MS_LIMIT:
        raise InvalidJob(f"{field_name} must be epoch seconds or ms from 1970 to the year 2286 "
                         f"(under {TIME_MS_LIMIT} ms; microseconds are not read), got {value!r}")
    return ms


def _routing_fields(fields: Any) -> dict[str, str]:
    if not isinstance(fields, dict) or not all(
            k in ROUTING_FIELDS and isinstance(v, str) for k, v in fields.items()):
        raise InvalidJob(f"routing must map {', '.join(ROUTING_FIELDS)} to text, got {fields!r}")
    return dict(fields)


#: The most retries a job may have: also what a task's ``max_retries = None`` (Celery's
#: "retry for ever") gets, so a runaway retry loop still ends.
MAX_RETRIES_LIMIT = 100


@dataclass
class JobSpec:
    """One job as submitted: service, payload, requirements and ordering fields."""

    service: str
    payload: dict[str, Any] = field(default_factory=dict)
    requirements: dict[str, Any] = field(default_factory=dict)
    priority: int = 50
    customer_id: str | None = None
    max_retries: int = 3
    workflow_id: str | None = None
    workflow_priority: int | None = None
    workflow_datetime: int | None = None
    current_step: int | None = None
    total_steps: int | None = None
    ctx: dict[str, Any] | None = None
    #: The pool (queue namespace); None: the job names none (the router's or "default").
    pool: str | None = None
    #: Record fields set by the router (``ROUTING_FIELDS``), strings.
    routing: dict[str, str] | None = None
    #: True when the job named its pool (``pool=`` or ``requirements.pool``).
    pool_named: bool = field(init=False)
    job_class: dict[str, Any] = field(init=False)
    #: Canonical JSON of ``job_class`` and its signature (the class key in Redis).
    class_json: str = field(init=False)
    class_signature: str = field(init=False)
    #: The class's matching part (``requirements.family_of``) and its signature.
    family_json: str = field(init=False)
    family_signature: str = field(init=False)
    #: ``payload`` and ``ctx`` as the record keeps them (``_json_text``).
    payload_json: str = field(init=False, repr=False)
    ctx_json: str | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.service = _name("service_required", self.service, required=True)
        if not isinstance(self.payload, dict):
            raise InvalidJob(f"payload must be a JSON object, got {type(self.payload).__name__}")
        key = next((k for k in self.payload if not isinstance(k, str)), None)
        if key is not None:  # Python's own "keywords must be strings", naming nothing
            raise InvalidJob(f"payload keys must be strings (the task's keyword arguments), "
                             f"got {key!r}")
        if self.ctx is not None and not isinstance(self.ctx, dict):
            raise InvalidJob(f"ctx must be a JSON object, got {type(self.ctx).__name__}")
        self.priority = _int("priority", self.priority, 0, 100, 50)
        self.max_retries = _int("max_retries", self.max_retries, 0, MAX_RETRIES_LIMIT, 3)
        self.customer_id = _name("customer_id", self.customer_id)
        self.workflow_id = _name("workflow_id", self.workflow_id)
        self.workflow_priority = _int("workflow_priority", self.workflow_priority, 0, 100, None)
        self.workflow_datetime = _time_ms("workflow_datetime", self.workflow_datetime)
        self.current_step = _int("current_step", self.current_step, 0, 10**6, None)
        self.total_steps = _int("total_steps", self.total_steps, 0, 10**6, None)
        where = "pool"
        if isinstance(self.requirements, dict) and "pool" in self.requirements:
            self.requirements = dict(self.requirements)
            named = self.requirements.pop("pool")
            if self.pool is not None and named is not None and named != self.pool:
                # requirements.pool won, and the pool given was dropped without a word
                raise InvalidJob(f"pool {self.pool!r} and requirements.pool {named!r} name "
                                 "two pools; a job is filed in one: give one of them")
            if named is not None:
                self.pool, where = named, "requirements.pool"
        self.pool_named = self.pool is not None and self.routing is None
        if self.pool is None:
            self.pool = DEFAULT_NAMESPACE
        try:  # a submit may make the pool it names: only a name a URL can carry
            check_new_pool(self.pool, where)
        except ValueError as exc:
            raise InvalidJob(str(exc)) from None
        if self.routing is not None:
            self.routing = _routing_fields(self.routing)
        self.payload_json = _json_text("payload", self.payload)
        self.ctx_json = None if self.ctx is None else _json_text("ctx", self.ctx)
        size = len(self.payload_json) + len(self.ctx_json or "{}")
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidJob(f"payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
        self.job_class = normalize_requirements(
            self.requirements, self.service, self.customer_id, self.workflow_id
        )
        self.class_json = canonical_json(self.job_class)
        self.class_signature = text_signature(self.class_json)
        self.family_json = canonical_json(family_of(self.job_class))
        self.family_signature = text_signature(self.family_json)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> JobSpec:
        """Build from the original's submission fields (``job_type``/``type`` aliases)."""
        if not isinstance(fields, dict):
            raise InvalidJob("a job must be a JSON object")
        data = dict(fields)
        service = None
        for alias in SERVICE_ALIASES:
            if data.get(alias) is not None:
                service = data.pop(alias)
                break
        for alias in SERVICE_ALIASES:
            data.pop(alias, None)
        known = {f.name for f in dataclasses.fields(cls)
                 if f.init and f.name not in ("service", "routing")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidJob(f"unknown job field(s): {', '.join(unknown)}")
        if data.get("payload") is None:
            data.pop("payload", None)
        if data.get("requirements") is None:
            data.pop("requirements", None)
        if data.get("pool") is None:
            data.pop("pool", None)
        return cls(service=service, **data)

    @property
    def effective_priority(self) -> int:
        return self.workflow_priority if self.workflow_priority is not None else self.priority

    def record_fields(self) -> dict[str, str]:
        """The job record fields, as strings for a Redis hash."""
        values: dict[str, Any] = {
            "service_required": self.service,
            "priority": self.priority,
            "payload": self.payload_json,
            "requirements": json.dumps(self.requirements),
            "customer_id": self.customer_id,
            "max_retries": self.max_retries,
            "workflow_id": self.workflow_id,
            "workflow_priority": self.workflow_priority,
            "workflow_datetime": self.workflow_datetime,
            "current_step": self.current_step,
            "total_steps": self.total_steps,
            "ctx": self.ctx_json,
            "pool": self.pool,
            **(self.routing or {}),
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    def route(self, pool: str, fields: dict[str, str]) -> None:
        """File the job in ``pool``, keeping the router's record ``fields``."""
        try:
            self.pool = check_namespace(pool)
        except ValueError as exc:
            raise InvalidJob(str(exc)) from None
        self.routing = _routing_fields(fields)

    def header(self) -> dict[str, Any]:
        """What the Celery message carries for the enqueue function."""
        return {
            "pool": self.pool,
            "class": self.class_signature,
            "class_json": self.class_json,
            "family": self.family_signature,
            "family_json": self.family_json,
            "priority": self.effective_priority,
            "at": self.workflow_datetime,
            "fields": self.record_fields(),
        }
