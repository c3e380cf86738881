"""OOM-aware escalation: a job that ran out of GPU memory asks for more and runs again.

A ``memory`` connector error on a worker that declares G GB of GPU memory
(``WORKER_GPU_MEMORY_GB``; without it nothing is escalated) raises the
job's ``hardware.gpu_memory_gb`` requirement to the next step of the ladder
above both G and what the job asked for, and files it again (``emp_escalate``)
without spending a retry: only a bigger worker takes it. Each step is recorded
on the job (``escalations``, a ``job_escalated`` event). When the ladder has
no higher step (or none its pool's machines have: ``gpu_memory_gb`` of the
pools file), or the job took its most steps, the failure counts as usual (a
retry, then failed). Moving the job to a bigger pool is left to the router. Settings (environment):

- ``EMP_OOM_LADDER_GB`` [8,16,24,48,80]: GPU memory sizes, GB, in any order.
- ``EMP_OOM_MAX_ESCALATIONS`` [3]: most steps per job; 0 turns escalation off.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from celery.exceptions import Ignore

from capability_router.env import env_int
from capability_router.errors import InvalidJob
from emp_tasks.model_prep import json_requirements
from machine.connectors.base import ConnectorError, ErrorType

logger = logging.getLogger(__name__)

DEFAULT_LADDER_GB = (8, 16, 24, 48, 80)
DEFAULT_MAX_STEPS = 3


def ladder_from_env() -> list[float]:
    text = os.environ.get("EMP_OOM_LADDER_GB")
    if not text:
        return list(DEFAULT_LADDER_GB)
    return sorted(float(item) for item in text.split(",") if item.strip())


def max_steps_from_env() -> int:
    return env_int("EMP_OOM_MAX_ESCALATIONS", DEFAULT_MAX_STEPS)


def next_step(worker_gb: float | None, required_gb: float | None,
              ladder: list[float], ceiling_gb: float | None = None) -> float | None:
    """The smallest ladder size above both the worker's memory and the requirement, and
    not above ``ceiling_gb`` (the most GPU memory the job's pool offers), or None."""
    floor = max(float(worker_gb or 0), float(required_gb or 0))
    step = next((gb for gb in sorted(ladder) if gb > floor), None)
    if step is not None and ceiling_gb is not None and step > ceiling_gb:
        return None
    return step


def pool_ceiling_gb(pool: str | None) -> float | None:
    """The largest GPU memory the pools file (``EMP_POOLS_FILE``) gives ``pool``; None
    without a pools file or a known range. A job is never escalated past what its own
    pool can run: it would wait there forever."""
    path = os.environ.get("EMP_POOLS_FILE")
    if not path or not pool:
        return None
    try:
        from capability_router.pools import load_pools  # the pools part of issue 13
        found = load_pools(path).get(pool)
    except Exception:  # no pools module or a broken file: routing reports that
        return None
    memory = getattr(found, "gpu_memory_gb", None)
    if isinstance(memory, (tuple, list)) and memory:
        memory = memory[-1]
    return float(memory) if isinstance(memory, (int, float)) and memory else None


def gpu_requirement(requirements: dict[str, Any]) -> float | None:
    """The job's ``hardware.gpu_memory_gb`` (positive_requirements win), or None."""
    for section in (requirements.get("positive_requirements") or {}, requirements):
        value = (section.get("hardware") or {}).get("gpu_memory_gb") \
            if isinstance(section.get("hardware"), dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def with_gpu_memory(requirements: dict[str, Any], gb: float) -> dict[str, Any]:
    """``requirements`` asking for ``gb`` of GPU memory, where the job put it before."""
    raised = copy.deepcopy(requirements)
    positive = raised.get("positive_requirements")
    if isinstance(positive, dict) and isinstance(positive.get("hardware"), dict) and \
            "gpu_memory_gb" in positive["hardware"]:
        positive["hardware"]["gpu_memory_gb"] = _number(gb)
        return raised
    hardware = raised.get("hardware")
    raised["hardware"] = {**(hardware if isinstance(hardware, dict) else {}),
                          "gpu_memory_gb": _number(gb)}
    return raised


def _number(gb: float) -> int | float:
    return int(gb) if float(gb).is_integer() else gb


def escalate(task: Any, exc: ConnectorError) -> BaseException | None:
    """Ignore once the job was filed again with more GPU memory; None when the failure
    should count as usual (not a memory error, off, no higher step, steps used up)."""
    context = task.job
    max_steps = max_steps_from_env()
    if context is None or exc.error_type != ErrorType.MEMORY or max_steps <= 0:
        return None
    profile = (task.app.conf.broker_transport_options or {}).get("worker_profile") or {}
    worker_gb = (profile.get("hardware") or {}).get("gpu_memory_gb")
    if not isinstance(worker_gb, (int, float)) or isinstance(worker_gb, bool):
        return None  # a worker that declares no GPU memory gives no step to go above
    functions = context.functions
    requirements = json_requirements(
        functions.client.hget(functions.keys.job(context.job_id), "requirements"))
    required = gpu_requirement(requirements)
    target = next_step(worker_gb, required, ladder_from_env(),
                       pool_ceiling_gb(functions.keys.namespace))
    if target is None:
        return None
    step = {"from_gb": required, "to_gb": _number(target), "worker_gpu_memory_gb": worker_gb,
            "worker_id": profile.get("worker_id") or "", "error": str(exc)}
    try:
        outcome = functions.escalate(context.job_id, context.attempt,
                                     with_gpu_memory(requirements, target), step, max_steps)
    except InvalidJob:
        return None
    if outcome == "exhausted":
        return None
    if outcome == "queued":
        logger.warning("job %s ran out of GPU memory on %s GB; filed again asking for %s GB",
                       context.job_id, worker_gb, target,
                       extra={"event": "job_escalated", "job_id": context.job_id})
        return Ignore(f"job {context.job_id} escalated to {target} GB: {exc}")
    return Ignore(f"job {context.job_id} is {outcome}; not escalating it")
