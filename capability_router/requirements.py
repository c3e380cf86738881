"""Requirement classes: validate, normalize and sign job requirements.

A *class* is everything about a job that decides which workers may run it:
service, normalized requirements, the customer (for isolation and deny
lists) and the workflow (for workflow-restricted workers). Jobs with equal
classes are interchangeable for matching, so Redis indexes pending jobs per
class and a claim inspects classes, never individual jobs.

Normalized form (what the Lua matcher reads)::

    {"service": str, "customer_id": str?, "workflow_id": str?, "strict": bool,
     "pos": {dotted.path: value}, "neg": {dotted.path: value}}

Accepted input is the original system's format: ``hardware`` (numbers or
``"all"``), ``models`` (list, a name, or ``"all"``), ``customer_isolation``
(``strict``/``loose``/``none``), ``positive_requirements`` /
``negative_requirements`` and any other key as a custom capability looked up
by dotted path (nested objects flatten to dotted paths).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from capability_router.errors import InvalidJob

ISOLATION_LEVELS = ("strict", "loose", "none")
HARDWARE_KEYS = ("gpu_memory_gb", "cpu_cores", "ram_gb")
_SCALARS = (str, int, float, bool)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def text_signature(text: str) -> str:
    """Short stable digest of canonical JSON text."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def signature(value: Any) -> str:
    """Short stable digest of a JSON-able value."""
    return text_signature(canonical_json(value))


def _check_finite(path: str, value: Any) -> None:
    """NaN and the infinities are not JSON: a class holding one was stored as ``Infinity``,
    which no strict reader of the job's record or listing takes, and an infinite need
    no worker ever meets."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidJob(f"{path} must be a finite number, got {value!r}")


def _check_scalar_or_list(path: str, value: Any) -> Any:
    if isinstance(value, _SCALARS):
        _check_finite(path, value)
        return value
    if isinstance(value, list):
        if not value:
            raise InvalidJob(f"{path} must not be an empty list")
        for item in value:
            if not isinstance(item, _SCALARS):
                raise InvalidJob(f"{path} items must be strings, numbers or booleans")
            _check_finite(f"{path} items", item)
        return sorted(set(value), key=canonical_json)
    raise InvalidJob(
        f"{path} must be a string, number, boolean, list or object, got {type(value).__name__}"
    )


def _flatten(path: str, value: Any, out: dict[str, Any], label: str) -> None:
    if isinstance(value, dict):
        if not value:
            raise InvalidJob(f"{label}.{path} must not be an empty object")
        for key, item in value.items():
            _check_key(key, f"{label}.{path}")
            _flatten(f"{path}.{key}", item, out, label)
        return
    out[path] = _check_scalar_or_list(f"{label}.{path}", value)


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or not key or "." in key:
        raise InvalidJob(f"{where}: keys must be non-empty strings without dots, got {key!r}")


def _number(path: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidJob(f"{path} must be a number or 'all', got {value!r}") from None
        else:
            raise InvalidJob(f"{path} must be a number or 'all', got {value!r}")
    if value != value or value < 0:
        raise InvalidJob(f"{path} must be a non-negative number, got {value!r}")
    _check_finite(path, value)
    return int(value) if float(value).is_integer() else value


def _section(
    source: dict[str, Any], service: str, label: str, out: dict[str, Any]
) -> str | None:
    """Flatten one requirements object into ``out``; return its isolation level."""
    isolation = None
    for key, value in source.items():
        _check_key(key, label)
        if key == "hardware":
            if not isinstance(value, dict):
                raise InvalidJob(f"{label}.hardware must be an object")
            for hw_key, hw_value in value.items():
                _check_key(hw_key, f"{label}.hardware")
                if hw_value == "all":
                    continue
                if hw_key in HARDWARE_KEYS:
                    out[f"hardware.{hw_key}"] = _number(f"{label}.hardware.{hw_key}", hw_value)
                else:
                    _flatten(f"hardware.{hw_key}", hw_value, out, label)
        elif key == "models":
            if value == "all":
                continue
            models = [value] if isinstance(value, str) else value
            if (
                not isinstance(models, list)
                or not models
                or not all(isinstance(m, str) and m for m in models)
            ):
                raise InvalidJob(f"{label}.models must be a model name, a list of names or 'all'")
            out[f"models.{service}"] = sorted(set(models))
        elif key == "customer_isolation":
            if value not in ISOLATION_LEVELS:
                raise InvalidJob(
                    f"{label}.customer_isolation must be one of {', '.join(ISOLATION_LEVELS)},"
                    f" got {value!r}"
                )
            isolation = value
        elif key in ("service_type", "service_required", "job_type"):
            if value != service:
                raise InvalidJob(
                    f"{label}.{key} is {value!r} but the job's service is {service!r}"
                )
        else:
            _flatten(key, value, out, label)
    return isolation


def normalize_requirements(
    requirements: dict[str, Any] | None,
    service: str,
    customer_id: str | None = None,
    workflow_id: str | None = None,
) -> dict[str, Any]:
    """Return the normalized class of a job, or raise InvalidJob naming the field."""
    if requirements is None:
        requirements = {}
    if not isinstance(requirements, dict):
        raise InvalidJob(
            f"requirements must be a JSON object, got {type(requirements).__name__}"
        )
    body = dict(requirements)
    positive = body.pop("positive_requirements", None) or {}
    negative = body.pop("negative_requirements", None) or {}
    for name, part in (("positive_requirements", positive), ("negative_requirements", negative)):
        if not isinstance(part, dict):
            raise InvalidJob(f"requirements.{name} must be an object")
    pos: dict[str, Any] = {}
    neg: dict[str, Any] = {}
    isolation = _section(body, service, "requirements", pos)
    isolation = _section(positive, service, "requirements.positive_requirements", pos) or isolation
    if _section(negative, service, "requirements.negative_requirements", neg):
        raise InvalidJob("requirements.negative_requirements cannot hold customer_isolation")
    strict = isolation == "strict"
    if strict and not customer_id:
        raise InvalidJob(
            "requirements.customer_isolation is 'strict' but the job has no customer_id"
        )
    job_class: dict[str, Any] = {"service": service, "strict": strict, "pos": pos, "neg": neg}
    if customer_id:
        job_class["customer_id"] = customer_id
    if workflow_id:
        job_class["workflow_id"] = workflow_id
    return job_class


def family_of(job_class: dict[str, Any]) -> dict[str, Any]:
    """What capability matching reads of a class: no workflow, and no customer unless strict.

    Jobs of every workflow and loose customer asking the same of a worker share
    one family, the unit of the claim index; the workflow and customer keep
    their order inside it (the job's score) and their restrictions are checked
    per class, by the few workers that have any (see ``emp.lua``).
    """
    family = {k: v for k, v in job_class.items() if k != "workflow_id"}
    if not family.get("strict"):
        family.pop("customer_id", None)
    return family
