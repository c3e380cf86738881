"""Build connectors by name or from the environment, and keep one per worker process.

Environment (defaults in brackets):

- ``EMP_CONNECTOR`` [unset]: ``comfyui``, ``comfyui-remote`` or ``simulation``; the
  worker's connector, whose models go into its capability profile.
- ``EMP_CONNECTOR_ID`` [``<kind>-<WORKER_ID>``, or ``<kind>``]: the id in log lines.
- ComfyUI: ``COMFYUI_URL`` [http://127.0.0.1:8188; required for comfyui-remote],
  ``COMFYUI_USERNAME``/``COMFYUI_PASSWORD``, ``COMFYUI_API_TOKEN``,
  ``COMFYUI_CA_BUNDLE``, ``COMFYUI_VERIFY_TLS`` [true],
  ``EMP_COMFYUI_TIMEOUT_SECONDS`` [600], ``EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS`` [120],
  ``EMP_COMFYUI_STOP_WAIT_SECONDS`` [120], ``EMP_COMFYUI_GPU_MEMORY_GB`` [the server's
  VRAM], ``EMP_COMFYUI_MODEL_SIZE_GB`` [6.5].
- Simulation: ``EMP_SIMULATION_DURATION_SECONDS`` [2], ``EMP_SIMULATION_STEPS`` [10],
  ``EMP_SIMULATION_PROGRESS_INTERVAL_SECONDS`` [0], ``EMP_SIMULATION_FAILURE_RATE`` [0],
  ``EMP_SIMULATION_FAILURE_TYPE`` [service], ``EMP_SIMULATION_MODELS``,
  ``EMP_SIMULATION_SEED``, ``EMP_SIMULATION_OUTAGE_FILE``, and model residency:
  ``EMP_SIMULATION_GPU_MEMORY_GB``, ``EMP_SIMULATION_GPU_MODELS``,
  ``EMP_SIMULATION_REMOTE_MODELS``, ``EMP_SIMULATION_MODEL_SIZE_GB``,
  ``EMP_SIMULATION_MODEL_SIZES``, ``EMP_SIMULATION_RAM_GB``,
  ``EMP_SIMULATION_RAM_LOAD_SECONDS``, ``EMP_SIMULATION_DISK_LOAD_SECONDS``,
  ``EMP_SIMULATION_DOWNLOAD_MB_PER_SECOND`` (see ``machine.connectors.simulation``).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Mapping
from typing import Any

from machine.connectors.base import Connector, ConnectorError, ErrorType
from machine.connectors.env_numbers import check_numbers

#: Connector kinds and their classes (imported on use).
KINDS: dict[str, str] = {
    "comfyui": "machine.connectors.comfyui:ComfyUIConnector",
    "comfyui-remote": "machine.connectors.comfyui_remote:ComfyUIRemoteConnector",
    "simulation": "machine.connectors.simulation:SimulationConnector",
}

#: The kind a service's jobs use when EMP_CONNECTOR names another service's connector.
DEFAULT_KIND_OF_SERVICE = {"comfyui": "comfyui", "simulation": "simulation"}

#: Settings key -> environment variable, per connector family.
_COMFYUI_ENV = {
    "url": "COMFYUI_URL", "username": "COMFYUI_USERNAME", "password": "COMFYUI_PASSWORD",
    "api_token": "COMFYUI_API_TOKEN", "ca_bundle": "COMFYUI_CA_BUNDLE",
    "verify_tls": "COMFYUI_VERIFY_TLS", "timeout_seconds": "EMP_COMFYUI_TIMEOUT_SECONDS",
    "startup_timeout_seconds": "EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS",
    "stop_wait_seconds": "EMP_COMFYUI_STOP_WAIT_SECONDS",
    "gpu_memory_gb": "EMP_COMFYUI_GPU_MEMORY_GB", "model_size_gb": "EMP_COMFYUI_MODEL_SIZE_GB",
}
_SIMULATION_ENV = {
    "duration_seconds": "EMP_SIMULATION_DURATION_SECONDS", "steps": "EMP_SIMULATION_STEPS",
    "progress_interval_seconds": "EMP_SIMULATION_PROGRESS_INTERVAL_SECONDS",
    "failure_rate": "EMP_SIMULATION_FAILURE_RATE",
    "failure_type": "EMP_SIMULATION_FAILURE_TYPE", "models": "EMP_SIMULATION_MODELS",
    "seed": "EMP_SIMULATION_SEED", "outage_file": "EMP_SIMULATION_OUTAGE_FILE",
    "gpu_memory_gb": "EMP_SIMULATION_GPU_MEMORY_GB", "gpu_models": "EMP_SIMULATION_GPU_MODELS",
    "remote_models": "EMP_SIMULATION_REMOTE_MODELS",
    "model_size_gb": "EMP_SIMULATION_MODEL_SIZE_GB",
    "model_sizes": "EMP_SIMULATION_MODEL_SIZES", "ram_gb": "EMP_SIMULATION_RAM_GB",
    "ram_load_seconds": "EMP_SIMULATION_RAM_LOAD_SECONDS",
    "disk_load_seconds": "EMP_SIMULATION_DISK_LOAD_SECONDS",
    "download_mb_per_second": "EMP_SIMULATION_DOWNLOAD_MB_PER_SECOND",
}
_ENV_OF_KIND = {"comfyui": _COMFYUI_ENV, "comfyui-remote": _COMFYUI_ENV,
                "simulation": _SIMULATION_ENV}


def connector_class(kind: str) -> type[Connector]:
    """The class of connector ``kind``; unknown kinds are a VALIDATION error."""
    if kind not in KINDS:
        raise ConnectorError(f"unknown connector {kind!r} (one of: {', '.join(KINDS)})",
                             ErrorType.VALIDATION)
    module_name, _, class_name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_connector(kind: str, settings: Mapping[str, Any] | None = None) -> Connector:
    """Build (not initialize) connector ``kind`` from a settings mapping."""
    return connector_class(kind).from_settings(dict(settings or {}))


def settings_from_env(kind: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings of connector ``kind`` from its environment variables (set ones only);
    a number no connector can use is a validation error naming its variable."""
    env = os.environ if environ is None else environ
    names = _ENV_OF_KIND.get(kind, {})
    settings: dict[str, Any] = {key: env[name] for key, name in names.items() if env.get(name)}
    check_numbers(settings, names)
    worker_id = env.get("WORKER_ID")
    settings["connector_id"] = env.get("EMP_CONNECTOR_ID") or (
        f"{kind}-{worker_id}" if worker_id else kind)
    return settings


def configured_kind(environ: Mapping[str, str] | None = None) -> str | None:
    """``EMP_CONNECTOR``, checked; None when unset."""
    env = os.environ if environ is None else environ
    kind = (env.get("EMP_CONNECTOR") or "").strip().lower()
    if not kind:
        return None
    connector_class(kind)
    return kind


def connector_of_kind(kind: str, environ: Mapping[str, str] | None = None,
                      named: str | None = None) -> Connector:
    """Connector ``kind`` built (not initialized) from the environment; a setting it cannot
    read is a validation error naming ``named`` (default: the kind)."""
    settings = settings_from_env(kind, environ)
    try:
        return make_connector(kind, settings)
    except (ValueError, TypeError) as exc:  # a list setting (say, model sizes) it cannot read
        raise ConnectorError(f"{named or kind}: a setting cannot be used: {exc}",
                             ErrorType.VALIDATION) from None


def connector_from_env(environ: Mapping[str, str] | None = None) -> Connector | None:
    """The connector ``EMP_CONNECTOR`` names, built from the environment; None when unset."""
    kind = configured_kind(environ)
    if not kind:
        return None
    return connector_of_kind(kind, environ, named=f"EMP_CONNECTOR={kind}")


def service_of_kind(kind: str) -> str:
    return connector_class(kind).service


_process_connectors: dict[tuple[int, str], Connector] = {}
_process_lock = threading.Lock()


def get_connector(service: str) -> Connector:
    """This process's initialized connector for ``service`` (made anew after a fork).

    The ``EMP_CONNECTOR`` connector when it serves ``service``, else the
    service's default kind with its environment settings. A connector whose
    ``initialize`` failed is not kept, so the next job tries again.
    """
    key = (os.getpid(), service)
    with _process_lock:
        connector = _process_connectors.get(key)
        if connector is not None:
            return connector
        kind = configured_kind()
        if kind is None or service_of_kind(kind) != service:
            kind = DEFAULT_KIND_OF_SERVICE.get(service)
            if kind is None:
                raise ConnectorError(f"no connector serves {service!r}", ErrorType.VALIDATION)
        connector = make_connector(kind, settings_from_env(kind))
        connector.initialize()
        _process_connectors[key] = connector
        return connector


def reset_connectors() -> None:
    """Close and forget this process's connectors (tests, reconfiguration)."""
    with _process_lock:
        for connector in _process_connectors.values():
            connector.close()
        _process_connectors.clear()
