"""``simulation``: a stand-in GPU service with steps, duration and injected failures.

Settings (environment names in brackets, defaults after them):

- ``duration_seconds`` [EMP_SIMULATION_DURATION_SECONDS, 2.0]: whole job.
- ``steps`` [EMP_SIMULATION_STEPS, 10].
- ``progress_interval_seconds`` [EMP_SIMULATION_PROGRESS_INTERVAL_SECONDS, 0]: least
  time between progress reports; 0 reports every step; the last step is always reported.
- ``failure_rate`` [EMP_SIMULATION_FAILURE_RATE, 0]: chance (0-1) a job fails, at a
  random step.
- ``failure_type`` [EMP_SIMULATION_FAILURE_TYPE, service]: memory, model, timeout,
  network, validation, service, or random. The failure raises the message a real
  service would, classified by the same table as real errors.
- ``models`` [EMP_SIMULATION_MODELS, none]: comma list reported by ``available_models``;
  these models are on disk.
- Model residency (``machine.connectors.model_cache``): ``gpu_memory_gb``
  [EMP_SIMULATION_GPU_MEMORY_GB, 24] room for models in the card (LRU eviction);
  ``gpu_models`` [EMP_SIMULATION_GPU_MODELS, none] loaded at start;
  ``remote_models`` [EMP_SIMULATION_REMOTE_MODELS, none] downloadable (advertised too);
  ``model_size_gb`` [EMP_SIMULATION_MODEL_SIZE_GB, 6] and ``model_sizes``
  [EMP_SIMULATION_MODEL_SIZES, none: ``name:GB,...``]; ``ram_gb`` [EMP_SIMULATION_RAM_GB,
  0] keeps evicted models in RAM; load times ``ram_load_seconds``
  [EMP_SIMULATION_RAM_LOAD_SECONDS, 0.5], ``disk_load_seconds``
  [EMP_SIMULATION_DISK_LOAD_SECONDS, 2], ``download_mb_per_second``
  [EMP_SIMULATION_DOWNLOAD_MB_PER_SECOND, 500]. A job's models (its requirements'
  ``models``, or its payload's) become ``gpu`` before its steps; the time that takes is
  added to its run (its result says ``load_seconds`` and ``cold``).
- ``seed`` [EMP_SIMULATION_SEED, unset]: makes the failures repeatable.
- ``outage_file`` [EMP_SIMULATION_OUTAGE_FILE, unset]: while this file exists the
  simulated service is down, as a restarting one is: the health check fails (the
  file's text, if any, is the reason) and a job is refused before its first step
  with "connection refused" (ServiceUnavailable). A file, so a test or an operator
  can start and end an outage of running workers from outside.

A job's payload may override ``steps`` (0 to 10,000; 0 runs one), ``duration`` (seconds, 0 to
604,800), ``failure_rate`` (0-1) and ``failure_type``; another value fails the job as a
validation error naming the field (not retried).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capability_router.prediction.directives import EVICT, Directive
from capability_router.residency import Placement
from machine.connectors.base import (
    Connector,
    ConnectorError,
    DirectiveOutcome,
    ErrorType,
    Health,
    JobCancelledByService,
    JobInput,
    JobOutput,
    Progress,
    ProgressCallback,
    ServiceUnavailable,
)
from machine.connectors.env_numbers import Rule
from machine.connectors.errors import classify_error
from machine.connectors.model_cache import GpuModelCache, LoadTimes

#: What a real service says for each failure type (classified back by classify_error).
FAILURE_MESSAGES: dict[str, str] = {
    ErrorType.MEMORY: "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)",
    ErrorType.MODEL: "Value not in list: ckpt_name: 'simulated.safetensors' not in []",
    ErrorType.TIMEOUT: "sampler step timed out (simulated)",
    ErrorType.NETWORK: "connection reset by peer (simulated)",
    ErrorType.VALIDATION: "Prompt outputs failed validation (simulated)",
    ErrorType.SERVICE: "simulated service error",
}


class SimulationConnector(Connector):
    """Sleeps through its steps, reporting progress; fails at the configured rate."""

    kind = "simulation"
    service = "simulation"
    acts_on_directives = True

    def __init__(self, connector_id: str = "simulation", duration_seconds: float = 2.0,
                 steps: int = 10, progress_interval_seconds: float = 0.0,
                 failure_rate: float = 0.0, failure_type: str = "service",
                 models: list[str] | None = None, seed: int | None = None,
                 outage_file: str | None = None, cache: GpuModelCache | None = None) -> None:
        super().__init__(connector_id)
        self.outage_file = Path(outage_file) if outage_file else None
        self.duration_seconds, self.steps = float(duration_seconds), max(1, int(steps))
        self.progress_interval_seconds = float(progress_interval_seconds)
        self.failure_rate = float(failure_rate)
        self.failure_type = _failure_type(failure_type)
        self.models = list(models or [])
        #: Where each model is (GPU, RAM, disk, remote); jobs load theirs into the GPU.
        self.cache = cache or GpuModelCache(24.0, disk=self.models)
        self._random = random.Random(seed)
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SimulationConnector:
        models = settings.get("models") or []
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        seed = settings.get("seed")
        return cls(
            settings.get("connector_id") or cls.kind,
            duration_seconds=float(settings.get("duration_seconds", 2.0)),
            steps=int(settings.get("steps", 10)),
            progress_interval_seconds=float(settings.get("progress_interval_seconds", 0.0)),
            failure_rate=float(settings.get("failure_rate", 0.0)),
            failure_type=str(settings.get("failure_type") or "service"),
            models=models, seed=int(seed) if seed not in (None, "") else None,
            outage_file=settings.get("outage_file") or None,
            cache=GpuModelCache(
                float(settings.get("gpu_memory_gb", 24)), disk=models,
                gpu=_names(settings.get("gpu_models")),
                remote=_names(settings.get("remote_models")),
                sizes_gb=_sizes(settings.get("model_sizes")),
                default_size_gb=float(settings.get("model_size_gb", 6)),
                ram_gb=float(settings.get("ram_gb", 0)),
                times=LoadTimes(float(settings.get("ram_load_seconds", 0.5)),
                                float(settings.get("disk_load_seconds", 2.0)),
                                float(settings.get("download_mb_per_second", 500)))))

    def initialize(self) -> None:
        """Nothing to connect to."""

    def outage(self) -> str | None:
        """Why the simulated service is down (the outage file's text), or None while it is up."""
        if self.outage_file is None:
            return None
        try:
            text = self.outage_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            text = str(exc)
        return text or "simulated outage"

    def check_health(self) -> Health:
        down = self.outage()
        if down is not None:
            return Health(False, {"simulated": True, "error": f"connection refused ({down})"})
        return Health(True, {"simulated": True})

    def available_models(self) -> dict[str, list[str]]:
        models = set(self.models) | set(self.cache.residency())
        return {self.service: sorted(models)} if models else {}

    def residency(self) -> dict[str, Placement]:
        with self._lock:
            return self.cache.residency()

    def process_job(self, job: JobInput, progress: ProgressCallback) -> JobOutput:
        """Run the steps; fail at a random step with probability ``failure_rate``."""
        payload = job.payload
        given = payload_numbers(payload)
        steps = max(1, int(given.get("steps", self.steps)))
        duration = float(given.get("duration", self.duration_seconds))
        rate = float(given.get("failure_rate", self.failure_rate))
        failure_type = _failure_type(str(payload.get("failure_type", self.failure_type)))
        down = self.outage()
        if down is not None:
            raise ServiceUnavailable(f"simulation service: connection refused ({down})")
        fail_at = self._random.randint(1, steps) if self._random.random() < rate else None
        cancel = threading.Event()
        with self._lock:
            self._cancels[job.job_id] = cancel
        started = time.monotonic()
        last_report = float("-inf")
        models = job_models(job)
        with self._lock:
            self.cache.on_disk(downloaded(models))
            load_seconds = self.cache.load(models)
        try:
            if load_seconds > 0:
                progress(Progress(0.0, f"loading {', '.join(models)}",
                                  {"models": models, "load_seconds": round(load_seconds, 3)}))
                if cancel.wait(load_seconds):
                    raise JobCancelledByService(f"job {job.job_id} cancelled")
            self.log("job_started", job.job_id, steps=steps)
            for step in range(1, steps + 1):
                if cancel.wait(duration / steps):
                    raise JobCancelledByService(f"job {job.job_id} cancelled")
                if step == fail_at:
                    raise self._failure(failure_type, step, steps)
                now = time.monotonic()
                if step == steps or now - last_report >= self.progress_interval_seconds:
                    last_report = now
                    progress(Progress(100.0 * step / steps, f"step {step}/{steps}",
                                      {"step": step, "total_steps": steps}))
        finally:
            with self._lock:
                self._cancels.pop(job.job_id, None)
        seconds = time.monotonic() - started
        return JobOutput(True, data={"steps": steps, "seconds": round(seconds, 3),
                                     "models": models, "cold": load_seconds > 0,
                                     "load_seconds": round(load_seconds, 3)},
                         processing_time_ms=int(seconds * 1000))

    def apply_directive(self, directive: Directive) -> DirectiveOutcome:
        """Preload (or keep) a model into the GPU, taking its load time, or evict one."""
        model = directive.model
        with self._lock:
            if directive.action == EVICT:
                done = self.cache.evict(model)
                return DirectiveOutcome(done, f"evicted {model}" if done
                                        else f"{model} is not in the GPU")
            if not self.cache.knows(model):
                return DirectiveOutcome(False, f"{model} is not available here")
            tier = self.cache.tier(model)
            seconds = self.cache.load_seconds([model])
        if tier == "gpu":
            with self._lock:
                self.cache.touch([model])
            return DirectiveOutcome(True, f"{model} already in the GPU")
        time.sleep(seconds)  # the card is busy loading, as for a job's cold start
        with self._lock:
            self.cache.load([model], evict_first=directive.make_room_from)
        return DirectiveOutcome(True, f"loaded {model} from {tier} in {seconds:.2f}s", seconds)

    def cancel_job(self, job_id: str) -> bool:
        with self._lock:
            cancel = self._cancels.get(job_id)
        if cancel is None:
            return False
        cancel.set()
        return True

    def _failure(self, failure_type: str, step: int, steps: int) -> ConnectorError:
        if failure_type == "random":
            failure_type = self._random.choice(list(FAILURE_MESSAGES))
        message = f"{FAILURE_MESSAGES[failure_type]} at step {step}/{steps}"
        return ConnectorError(message, classify_error(message), {"simulated": failure_type})


def job_models(job: JobInput) -> list[str]:
    """The models a job runs: its requirements' ``models`` (not "all"), else its payload's."""
    for source in (job.requirements or {}, job.payload or {}):
        value = source.get("models")
        if isinstance(value, str) and value != "all":
            return [value]
        if isinstance(value, list):
            return [m for m in dict.fromkeys(value) if isinstance(m, str) and m]
    return []


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return list(value or [])


def _sizes(value: Any) -> dict[str, float]:
    """``name:GB,...`` (or a mapping) -> {name: GB}; ValueError names a bad entry."""
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    sizes = {}
    for item in _names(value):
        name, sep, size = item.rpartition(":")
        try:
            sizes[name] = float(size)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConnectorError(f"bad model size {item!r} (want name:GB)", ErrorType.VALIDATION)
    return sizes


#: What a payload's overrides must be. Unchecked, ``"steps": "abc"`` failed the job with
#: a bare ValueError, ``"duration": 1e10`` with an OverflowError from the wait, a negative
#: duration ran at once, and ``"steps": 1e9`` would have sent a progress event a step for
#: hours: a simulated job of over a week or 10,000 steps is a mistake, not a test.
PAYLOAD_RULES: dict[str, Rule] = {
    "steps": Rule(whole=True, low=0, high=10_000),  # 0 runs one step, as it always did
    "duration": Rule(high=604_800),
    "failure_rate": Rule(high=1),
}


def payload_numbers(payload: Mapping[str, Any]) -> dict[str, float]:
    """The payload's overrides as numbers; ConnectorError (validation, not retried)
    naming the first one its rule refuses."""
    numbers: dict[str, float] = {}
    for key, rule in PAYLOAD_RULES.items():
        if key not in payload:
            continue
        number = rule.number(payload[key])
        if number is None:
            raise ConnectorError(f"payload {key} must be {rule.describe()}, got "
                                 f"{payload[key]!r}", ErrorType.VALIDATION, {"field": key})
        numbers[key] = number
    return numbers


def _failure_type(name: str) -> str:
    name = name.strip().lower()
    if name != "random" and name not in FAILURE_MESSAGES:
        raise ConnectorError(f"unknown simulation failure type {name!r} (one of: "
                             f"{', '.join([*FAILURE_MESSAGES, 'random'])})", ErrorType.VALIDATION)
    return name


def downloaded(models: list[str]) -> list[str]:
    """Those of ``models`` that the machine's model cache (``EMP_MODEL_CACHE_DIR``, filled
    by ``machine.models`` before the job starts) holds: simulating their download again
    would count the cold start twice."""
    root = os.environ.get("EMP_MODEL_CACHE_DIR")
    if not root:
        return []
    return [model for model in models if (Path(root) / model).is_file()]
