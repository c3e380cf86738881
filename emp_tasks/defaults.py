"""Every default of the project, and the environment variables that override them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from capability_router.env import (  # noqa: F401 - re-exported
    SettingError,
    check_at_least,
    env,
    env_at_least,
    env_flag,
    env_float,
    env_int,
    env_number,
    flag_error,
)

#: Port of the Redis ``emp up`` starts: fixed, so every shell can find it, and not 6379, so
#: jobs never land quietly in some other program's Redis.
LOCAL_REDIS_PORT = 6390
#: Redis URL when none is set and no ``emp up`` is recorded (see ``emp_tasks.locate``).
REDIS_URL = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
#: Lease length in seconds (``EMP_LEASE_SECONDS``).
LEASE_SECONDS = 30.0
#: Longest block of an idle worker on its wake-up list, seconds (``EMP_IDLE_BLOCK_SECONDS``).
IDLE_BLOCK_SECONDS = 1.0
#: How long job records and job event streams are kept after they end (``EMP_RETENTION_SECONDS``).
RETENTION_SECONDS = 7 * 24 * 3600
#: Approximate length the namespace event stream is trimmed to (``EMP_EVENTS_MAXLEN``).
EVENTS_MAXLEN = 100_000
#: Attempts without an outcome (claims, less those ending in a retry) after which a job
#: whose worker keeps dying is failed (``EMP_MAX_ATTEMPTS``).
MAX_ATTEMPTS = 10
#: Worker pool processes (``WORKER_CONCURRENCY``).
CONCURRENCY = 1
#: Times a job its service refused (down, restarting) is given back without spending a
#: retry, per run; later refusals count as usual (``EMP_MAX_SERVICE_RELEASES``).
MAX_SERVICE_RELEASES = 5
#: Seconds a given-back job waits before it can be claimed again
#: (``EMP_SERVICE_RELEASE_DELAY_SECONDS``).
SERVICE_RELEASE_DELAY_SECONDS = 1.0
#: Workers with a connector ask its health before each claim (``EMP_HEALTH_GATE``: on/off).
HEALTH_GATE = True
#: Seconds between health checks while a worker's service is down (``EMP_HEALTH_GATE_SECONDS``).
HEALTH_GATE_SECONDS = 1.0
#: Seconds a worker waits for its service's health check before counting it down
#: (``EMP_HEALTH_GATE_TIMEOUT_SECONDS``).
HEALTH_GATE_TIMEOUT_SECONDS = 5.0
#: Seconds a passed health check keeps the gate open without asking the service again
#: (``EMP_HEALTH_GATE_OPEN_SECONDS``): a worker claiming back to back probes at most this often.
HEALTH_GATE_OPEN_SECONDS = 1.0


class CeleryConfigError(ImportError):
    """``EMP_CELERY_CONFIG`` names a module that cannot be imported."""


def worker_pools() -> list[str]:
    """Pools a worker serves: ``WORKER_POOLS`` (comma list), else its machine's
    ``MACHINE_POOL`` (a machine's workers inherit it), else "default"."""
    text = env("WORKER_POOLS") or env("MACHINE_POOL") or "default"
    return [p.strip() for p in text.split(",") if p.strip()] or ["default"]


def worker_pools_setting() -> str:
    """The setting ``worker_pools`` read, to name it in an error about its pools."""
    return "WORKER_POOLS" if env("WORKER_POOLS") else "MACHINE_POOL"


def redis_url() -> str:
    """The Redis to use: ``EMP_REDIS_URL``, ``REDIS_URL``, the running ``emp up``, the default."""
    from emp_tasks.locate import redis_url as located

    return located()


_N = TypeVar("_N", int, float)


def env_positive(name: str, default: float, convert: Callable[[Any], _N] = float) -> _N:
    """``env_at_least`` above 0, its error worded "must be a positive number" (or
    "integer", by ``convert``) as tests and operators know it."""
    return env_at_least(name, default, 0, convert, above=True,
                        what=f"a positive {'integer' if convert is int else 'number'}")


def lease_seconds() -> float:
    """A lease must outlast its renewal period (a third of it): 0 expired every lease as
    it was made, so running jobs were put back and run again."""
    return env_positive("EMP_LEASE_SECONDS", LEASE_SECONDS)


def idle_block_seconds() -> float:
    return env_float("EMP_IDLE_BLOCK_SECONDS", IDLE_BLOCK_SECONDS)


def time_limits() -> dict[str, float]:
    """Celery time limits from ``EMP_TASK_TIME_LIMIT`` / ``EMP_TASK_SOFT_TIME_LIMIT`` (seconds).

    A job over its hard limit is killed and ends ``failed``; over its soft
    limit the task gets SoftTimeLimitExceeded and may clean up first.
    """
    limits = {}
    for name, setting in (("EMP_TASK_TIME_LIMIT", "task_time_limit"),
                          ("EMP_TASK_SOFT_TIME_LIMIT", "task_soft_time_limit")):
        if env(name):
            limits[setting] = env_float(name, 0.0)
    return limits


def queue_settings() -> dict[str, int]:
    """Namespace tunables handed to the function library."""
    return {
        # 0 would expire each record as it ended; 0 attempts fail a job at its first expiry.
        "retention_ms": int(env_positive("EMP_RETENTION_SECONDS", RETENTION_SECONDS) * 1000),
        "events_maxlen": env_int("EMP_EVENTS_MAXLEN", EVENTS_MAXLEN),
        "max_attempts": env_positive("EMP_MAX_ATTEMPTS", MAX_ATTEMPTS, int),
        "max_service_releases": env_int("EMP_MAX_SERVICE_RELEASES", MAX_SERVICE_RELEASES),
        "service_release_delay_ms": int(env_float("EMP_SERVICE_RELEASE_DELAY_SECONDS",
                                                  SERVICE_RELEASE_DELAY_SECONDS) * 1000),
        **affinity_settings(),
    }


#: Warm-first claim settings (``emp_claim``) and their environment variables, in
#: seconds where the setting is ms; set only when the variable is (defaults in emp.lua).
AFFINITY_ENV = {
    "affinity_window": "EMP_AFFINITY_WINDOW",
    "affinity_max_delay_ms": "EMP_AFFINITY_MAX_DELAY_SECONDS",
    "load_ms_ram": "EMP_LOAD_SECONDS_RAM", "load_ms_disk": "EMP_LOAD_SECONDS_DISK",
    "load_ms_remote": "EMP_LOAD_SECONDS_REMOTE",
}


def affinity_settings() -> dict[str, int]:
    """``EMP_AFFINITY`` (on/off) and the ``AFFINITY_ENV`` variables that are set."""
    out = {}
    if env("EMP_AFFINITY", "").strip():
        out["affinity"] = int(env_flag("EMP_AFFINITY"))
    for setting, name in AFFINITY_ENV.items():
        if env(name):
            scale = 1 if setting == "affinity_window" else 1000
            out[setting] = int(env_float(name, 0.0) * scale)
    return out


def health_gate() -> bool:
    """``EMP_HEALTH_GATE``: off (0, false, no) lets a worker claim whatever its service's health."""
    return env_flag("EMP_HEALTH_GATE", HEALTH_GATE)


def directives_on() -> bool:
    """``EMP_DIRECTIVES``: off stops a worker following placement directives."""
    return env_flag("EMP_DIRECTIVES", True)


def health_gate_seconds() -> float:
    return env_float("EMP_HEALTH_GATE_SECONDS", HEALTH_GATE_SECONDS)


def health_gate_timeout_seconds() -> float:
    return env_float("EMP_HEALTH_GATE_TIMEOUT_SECONDS", HEALTH_GATE_TIMEOUT_SECONDS)


def health_gate_open_seconds() -> float:
    return env_float("EMP_HEALTH_GATE_OPEN_SECONDS", HEALTH_GATE_OPEN_SECONDS)
