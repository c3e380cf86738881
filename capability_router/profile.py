"""Worker capability profiles: what a worker has, normalized for matching.

The profile fields are the original system's: ``worker_id``, ``machine_id``,
``services``, ``hardware {gpu_memory_gb, gpu_model, ram_gb, cpu_cores}``,
``models {service: [model, ...]}``, ``customer_access {isolation,
allowed_customers, denied_customers}``, ``workflow_id`` and free-form custom
fields (region, cost tier, features, ...). Workers with equal capabilities
share a profile signature, so Redis keeps one compatibility set for them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capability_router.errors import InvalidProfile
from capability_router.jobspec import NAME_RE, NAME_RULE
from capability_router.json_names import unique_object
from capability_router.requirements import canonical_json, signature

_IDENTITY = ("worker_id", "machine_id")
_SPECIAL = ("services", "hardware", "models", "customer_access", "workflow_id")


def _split(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


#: The shape of WORKER_PROFILE_JSON's special fields: (type, what the message calls it).
_PROFILE_JSON_FIELDS: dict[str, tuple[type, str]] = {
    "services": (list, "a list of service names"), "hardware": (dict, "a JSON object"),
    "models": (dict, "a JSON object of service: [model, ...]"),
    "customer_access": (dict, "a JSON object"), "workflow_id": (str, "a string"),
    "worker_id": (str, "a string"), "machine_id": (str, "a string"),
}


def profile_json(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``WORKER_PROFILE_JSON`` parsed, its special fields of the right kind ({} unset).

    A wrong kind was taken as it came: ``"services": "echo"`` served the services "c",
    "e", "h" and "o"; a list where an object belongs, or a JSON that is not an object,
    stopped the start with a traceback; a number as ``workflow_id`` matched no job.
    """
    env = os.environ if environ is None else environ
    text = env.get("WORKER_PROFILE_JSON")
    if not text:
        return {}
    try:
        base = json.loads(text, object_pairs_hook=unique_object)
    except ValueError as exc:  # JSONDecodeError, or a name given twice
        raise InvalidProfile(f"WORKER_PROFILE_JSON is not valid JSON: {exc}") from None
    if not isinstance(base, dict):
        raise InvalidProfile(f"WORKER_PROFILE_JSON must be a JSON object, got "
                             f"{type(base).__name__}")
    for name, (kind, wanted) in _PROFILE_JSON_FIELDS.items():
        if name in base and not isinstance(base[name], kind):
            raise InvalidProfile(f"WORKER_PROFILE_JSON {name} must be {wanted}, got "
                                 f"{json.dumps(base[name])[:40]}")
    models = base.get("models") or {}
    if not all(isinstance(v, list) and all(isinstance(m, str) for m in v)
               for v in models.values()):
        raise InvalidProfile("WORKER_PROFILE_JSON models must map service names to lists "
                             "of models")
    return base


def names_services(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``WORKER_SERVICES`` or ``WORKER_PROFILE_JSON``'s ``services`` says what the
    worker serves; otherwise a worker serves every job type it can (``build_profile``)."""
    env = os.environ if environ is None else environ
    if _split(env.get("WORKER_SERVICES")):
        return True
    try:
        return bool(profile_json(env).get("services"))
    except InvalidProfile:
        return False  # from_env says why


def _number_or_text(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def parse_models(text: str | None, services: list[str]) -> dict[str, list[str]]:
    """Parse ``WORKER_MODELS``: JSON ``{service: [..]}``, ``svc:model,..`` or ``model,..``.

    A bare model name applies to every service of the worker.
    """
    if not text or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text, object_pairs_hook=unique_object)
        except ValueError as exc:  # JSONDecodeError, or a service named twice
            raise InvalidProfile(f"WORKER_MODELS is not valid JSON: {exc}") from None
        if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(m, str) for m in v) for v in value.values()
        ):
            raise InvalidProfile("WORKER_MODELS JSON must map service names to lists of models")
        if "" in value or any("" in names for names in value.values()):
            raise InvalidProfile(f"WORKER_MODELS names an empty service or model: {text}")
        return {svc: sorted(set(models)) for svc, models in value.items()}
    models: dict[str, set[str]] = {}
    for item in _split(text):
        service, sep, model = item.partition(":")
        if sep and not (service.strip() and model.strip()):
            # "comfyui:" advertised a model named "", which no job can require (a job's
            # model names are not empty); ":sdxl" one of a service named "".
            raise InvalidProfile(f"WORKER_MODELS item {item!r} needs service:model, "
                                 "both named")
        service, model = service.strip(), model.strip()
        targets = [service] if sep else services
        for svc in targets:
            models.setdefault(svc, set()).add(model if sep else item)
    return {svc: sorted(names) for svc, names in models.items()}


@dataclass
class WorkerProfile:
    """What one worker can do.

    :param worker_id: unique id of the worker (its wake-up key and lease owner).
    :param services: services (job types) it runs.
    :param hardware: ``gpu_memory_gb``, ``ram_gb``, ``cpu_cores`` (numbers), ``gpu_model``.
    :param models: models it really has, per service.
    :param customer_access: ``isolation`` ("strict"/"loose"/"none"),
        ``allowed_customers``, ``denied_customers``.
    :param workflow_id: when set, the worker takes only that workflow's jobs.
    :param custom: free-form capabilities, matched by dotted path.
    """

    worker_id: str
    services: list[str]
    machine_id: str | None = None
    hardware: dict[str, Any] = field(default_factory=dict)
    models: dict[str, list[str]] = field(default_factory=dict)
    customer_access: dict[str, Any] = field(default_factory=dict)
    workflow_id: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.worker_id, str) or not self.worker_id or "}" in self.worker_id:
            raise InvalidProfile(f"worker_id must be a non-empty string, got {self.worker_id!r}")
        if (isinstance(self.services, str) or not self.services
                or not all(isinstance(s, str) and s for s in self.services)):
            raise InvalidProfile("a worker needs at least one service (WORKER_SERVICES)")
        for key in ("allowed_customers", "denied_customers"):
            for customer in self.customer_access.get(key) or []:
                if not isinstance(customer, str) or not NAME_RE.match(customer):
                    # a name no job can carry: the worker matched no customer by it
                    raise InvalidProfile(f"{key} must be customer ids ({NAME_RULE}), "
                                         f"got {customer!r}")
        isolation = self.customer_access.get("isolation", "none")
        if isolation not in ("strict", "loose", "none"):
            raise InvalidProfile(
                f"customer isolation must be strict, loose or none, not {isolation!r}"
            )
        for key in ("gpu_memory_gb", "ram_gb", "cpu_cores"):
            value = self.hardware.get(key)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not is_number:
                raise InvalidProfile(f"hardware.{key} must be a number, got {value!r}")
        # NaN and the infinities (WORKER_PROFILE_JSON's Infinity, WORKER_SPEED=inf) are
        # not JSON: the profile was stored with a bare Infinity no strict reader takes
        for path, value in self.normalized()["caps"].items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, float) and not math.isfinite(item):
                    raise InvalidProfile(f"{path} must be a finite number, got {item!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerProfile:
        """Build from the original's profile JSON (unknown keys become custom fields)."""
        data = dict(data)
        known = {k: data.pop(k) for k in (*_IDENTITY, *_SPECIAL) if k in data}
        custom = {**data.pop("custom", {}), **data}
        return cls(custom=custom, **known)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> WorkerProfile:
        """Read the original's ``WORKER_*`` variables; ``overrides`` win over them.

        ``WORKER_PROFILE_JSON`` holds a JSON profile whose fields are merged
        first; ``WORKER_<NAME>`` variables not listed below become custom
        fields (``WORKER_REGION=eu`` -> ``region: "eu"``).
        """
        env = os.environ if environ is None else environ
        base = profile_json(env)
        services = _split(env.get("WORKER_SERVICES")) or base.get("services") or ["simulation"]
        hardware = dict(base.get("hardware", {}))
        for key in ("gpu_memory_gb", "ram_gb", "cpu_cores"):
            raw = env.get(f"WORKER_{key.upper()}")
            if raw:
                value = _number_or_text(raw)
                if isinstance(value, str):
                    raise InvalidProfile(f"WORKER_{key.upper()} must be a number, got {raw!r}")
                if not 0 <= value < math.inf:  # NaN too: a worker with -4 GB took jobs
                    raise InvalidProfile(f"WORKER_{key.upper()} must be a number of at "
                                         f"least 0, got {raw!r}")
                hardware[key] = value
        if env.get("WORKER_GPU_MODEL"):
            hardware["gpu_model"] = env["WORKER_GPU_MODEL"]
        models = dict(base.get("models", {}))
        models.update(parse_models(env.get("WORKER_MODELS"), services))
        access = dict(base.get("customer_access", {}))
        if env.get("WORKER_CUSTOMER_ISOLATION"):
            access["isolation"] = env["WORKER_CUSTOMER_ISOLATION"]
        if env.get("ALLOWED_CUSTOMERS"):
            access["allowed_customers"] = _split(env["ALLOWED_CUSTOMERS"])
        if env.get("DENIED_CUSTOMERS"):
            access["denied_customers"] = _split(env["DENIED_CUSTOMERS"])
        reserved = {
            "WORKER_ID", "WORKER_SERVICES", "WORKER_GPU_MEMORY_GB", "WORKER_RAM_GB",
            "WORKER_CPU_CORES", "WORKER_GPU_MODEL", "WORKER_MODELS",
            "WORKER_CUSTOMER_ISOLATION", "WORKER_WORKFLOW_ID", "WORKER_PROFILE_JSON",
            "WORKER_CONCURRENCY", "WORKER_POOLS",
        }
        custom = {k: v for k, v in base.items() if k not in (*_IDENTITY, *_SPECIAL)}
        for name, raw in env.items():
            if name.startswith("WORKER_") and name not in reserved and raw:
                custom[name[len("WORKER_"):].lower()] = _number_or_text(raw)
        values: dict[str, Any] = {
            "worker_id": env.get("WORKER_ID") or base.get("worker_id") or _default_worker_id(),
            "machine_id": env.get("MACHINE_ID") or base.get("machine_id"),
            "services": services,
            "hardware": hardware,
            "models": models,
            "customer_access": access,
            "workflow_id": env.get("WORKER_WORKFLOW_ID") or base.get("workflow_id"),
            "custom": custom,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def normalized(self) -> dict[str, Any]:
        """The form the Lua matcher reads (identity fields left out)."""
        caps: dict[str, Any] = {}
        _flatten_caps("hardware", self.hardware, caps)
        for service, models in self.models.items():
            caps[f"models.{service}"] = sorted(set(models))
        _flatten_caps("", self.custom, caps)
        access = self.customer_access
        profile: dict[str, Any] = {
            "services": sorted(set(self.services)),
            "isolation": access.get("isolation", "none"),
            "allowed": sorted(access.get("allowed_customers", []) or []),
            "denied": sorted(access.get("denied_customers", []) or []),
            "caps": caps,
        }
        if self.workflow_id:
            profile["workflow_id"] = self.workflow_id
        return profile

    @property
    def signature(self) -> str:
        return signature(self.normalized())

    def to_json(self) -> str:
        return canonical_json(self.normalized())

    def as_dict(self) -> dict[str, Any]:
        """The original's profile shape, identity included."""
        return {
            "worker_id": self.worker_id,
            "machine_id": self.machine_id,
            "services": self.services,
            "hardware": self.hardware,
            "models": self.models,
            "customer_access": self.customer_access,
            "workflow_id": self.workflow_id,
            **self.custom,
        }


def _flatten_caps(path: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_caps(f"{path}.{key}" if path else key, item, out)
    elif value is not None:
        out[path] = sorted(set(value), key=canonical_json) if isinstance(value, list) else value


def _default_worker_id() -> str:
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"
