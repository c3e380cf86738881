"""The simulator's input: a trace of jobs (JSONL) or the built-in synthetic day.

Trace format, one JSON object per line (README, "Simulator"):

* ``id`` (text, unique), ``at`` (arrival, seconds from the trace's midnight),
  ``service`` (text), ``run_seconds`` (true run time on a warm worker);
* optional: ``requirements`` (as submitted; ``models`` and
  ``hardware.gpu_memory_gb`` matter), ``models`` (names; added to the
  requirements when missing there), ``model_gb`` (``{model: size GB}``,
  default ``DEFAULT_MODEL_GB``), ``payload`` (size features the duration
  model reads: ``tokens``, ``steps``, ``width``, ``height``, ``frames``),
  ``priority`` (0-100, default 50), ``kind`` (a label for reports).
  ``trace_line_problem`` checks each line's types and ranges before a run.

The synthetic day is modelled on the original's description: 1 s text jobs,
10-60 s image jobs, 10-minute video jobs; 60 models of 2-25 GB picked with
Zipf popularity per kind; a daily arrival curve (quiet night, afternoon
peak) with bursts of one popular model; the fleet follows the same curve
from 10 to 50 to 10 machines (times ``scale``). Same seed, same trace.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capability_router.json_names import unique_object

#: Size of a model a trace gives no size for, GB.
DEFAULT_MODEL_GB = 5.0
DAY_SECONDS = 86_400

#: Share of jobs per kind (by count) in the synthetic day.
MIX = {"text": 0.55, "image": 0.37, "video": 0.08}
#: Zipf exponent of model popularity within a kind.
ZIPF_S = 1.1
#: Machines at the quietest and the busiest hour, per unit of scale.
FLEET_MIN, FLEET_MAX = 10, 50
#: Busy workers at the peak as a share of the peak fleet (the arrival rate is set from it).
PEAK_UTILIZATION = 0.75
#: Mean run seconds per job of each kind (for the arrival rate).
MEAN_RUN = {"text": 1.0, "image": 35.0, "video": 600.0}
#: Bursts per day: (share of the day's hours they fall in, minutes, rate multiplier).
BURSTS = 6
BURST_MINUTES = 10
BURST_FACTOR = 2.0


@dataclass
class TraceJob:
    """One job of a trace."""

    id: str
    #: Arrival, seconds from the trace's midnight.
    at: float
    service: str
    #: True run time on a worker that has its models loaded, seconds.
    run_seconds: float
    requirements: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 50
    kind: str = ""

    def __post_init__(self) -> None:
        if self.models and "models" not in self.requirements:
            self.requirements = {**self.requirements, "models": list(self.models)}
        if not self.models:
            self.models = list(self.requirements.get("models") or [])
        if not self.kind:
            self.kind = self.service

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": round(self.at, 3), "service": self.service,
                "run_seconds": round(self.run_seconds, 3), "requirements": self.requirements,
                "models": self.models, "payload": self.payload, "priority": self.priority,
                "kind": self.kind}


@dataclass
class Scenario:
    """A trace with what the simulator needs beside it: model sizes and the fleet."""

    jobs: list[TraceJob]
    #: Model -> size in GB.
    model_gb: dict[str, float]
    #: Machines of the uniform fleet at each hour of the day (24 entries).
    fleet_by_hour: list[int]
    #: Simulated span: [start, end) seconds from midnight (arrivals outside are dropped).
    start: float = 0.0
    end: float = DAY_SECONDS

    def machines_at(self, t: float) -> int:
        """The uniform fleet's size at ``t`` seconds from midnight."""
        return self.fleet_by_hour[int(t // 3600) % 24]


def day_shape(hour: float) -> float:
    """Relative load at ``hour`` (0-24): 0.2 at night, 1.0 at 14:00."""
    if 6 <= hour <= 22:
        return 0.2 + 0.8 * math.sin(math.pi * (hour - 6) / 16) ** 1.5
    return 0.2


def fleet_by_hour(scale: float) -> list[int]:
    """Machines per hour: FLEET_MIN at night to FLEET_MAX at the peak, times ``scale``."""
    return [max(1, round(scale * (FLEET_MIN + (FLEET_MAX - FLEET_MIN)
                                  * (day_shape(h + 0.5) - 0.2) / 0.8)))
            for h in range(24)]


def catalog(rng: random.Random) -> dict[str, dict[str, float]]:
    """60 models per kind, most popular first: 20 text (2-8 GB), 30 image (2-12 GB,
    ``sdxl`` the most popular, the pools file preloads it), 10 video (15-25 GB)."""
    text = {f"text-{i:02d}": round(rng.uniform(2, 8), 1) for i in range(20)}
    image = {"sdxl": 6.9, **{f"image-{i:02d}": round(rng.uniform(2, 12), 1)
                             for i in range(1, 30)}}
    video = {f"video-{i:02d}": round(rng.uniform(15, 25), 1) for i in range(10)}
    return {"text": text, "image": image, "video": video}


def _zipf(rng: random.Random, names: list[str]) -> str:
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(names))]
    return rng.choices(names, weights)[0]


def make_job(rng: random.Random, n: int, at: float, kind: str, model: str) -> TraceJob:
    """One synthetic job of ``kind`` using ``model``, its run time from its size features."""
    noise = math.exp(rng.gauss(0, 0.15))
    if kind == "text":
        tokens = rng.randint(300, 700)
        return TraceJob(f"j{n:07d}", at, "text", tokens / 500 * noise,
                        models=[model], payload={"tokens": tokens}, kind=kind)
    if kind == "image":
        steps = rng.randint(10, 60)
        return TraceJob(f"j{n:07d}", at, "comfyui", min(60.0, max(10.0, steps * noise)),
                        requirements={"hardware": {"gpu_memory_gb": 16}}, models=[model],
                        payload={"steps": steps, "width": 1024, "height": 1024}, kind=kind)
    frames = rng.randint(108, 132)
    return TraceJob(f"j{n:07d}", at, "comfyui", 20 * frames / 4 * noise,
                    requirements={"hardware": {"gpu_memory_gb": 40}}, models=[model],
                    payload={"steps": 20, "width": 512, "height": 512, "frames": frames},
                    kind=kind)


def synthetic_day(seed: int = 1, scale: float = 1.0, start_hour: float = 0.0,
                  hours: float = 24.0) -> Scenario:
    """The built-in day (module docstring), arrivals in [start_hour, start_hour + hours)."""
    rng = random.Random(seed)
    models = catalog(rng)
    mean_run = sum(MIX[k] * MEAN_RUN[k] for k in MIX)
    peak_rate = scale * FLEET_MAX * PEAK_UTILIZATION / mean_run  # jobs per second
    bursts = sorted((rng.uniform(8, 20) * 3600, rng.choice(["text", "image"]))
                    for _ in range(BURSTS))
    start, end = start_hour * 3600, (start_hour + hours) * 3600
    jobs: list[TraceJob] = []
    t, n = 0.0, 0
    # Thinning of a Poisson process at the highest rate (peak x burst factor).
    top = peak_rate * BURST_FACTOR
    kinds, shares = list(MIX), list(MIX.values())
    while True:
        t += rng.expovariate(top)
        if t >= end:
            break
        rate = peak_rate * day_shape(t / 3600)
        burst = next((b for b in bursts if b[0] <= t < b[0] + BURST_MINUTES * 60), None)
        if rng.random() * top >= rate * (BURST_FACTOR if burst else 1.0):
            continue
        if burst and rng.random() < 0.5:
            kind = burst[1]
            model = next(iter(models[kind]))  # a burst hammers the kind's top model
        else:
            kind = rng.choices(kinds, shares)[0]
            model = _zipf(rng, list(models[kind]))
        job = make_job(rng, n, t, kind, model)
        n += 1
        if t >= start:
            jobs.append(job)
    sizes = {m: gb for kind in models.values() for m, gb in kind.items()}
    return Scenario(jobs, sizes, fleet_by_hour(scale), start, end)


#: Latest arrival and longest run of a trace job, seconds (a year): larger values
#: overflow the virtual clock's integer milliseconds.
MAX_TRACE_SECONDS = 366 * DAY_SECONDS

#: Trace fields and whether a line must have them.
_TRACE_FIELDS = {"id": True, "at": True, "service": True, "run_seconds": True,
                 "requirements": False, "models": False, "model_gb": False, "payload": False,
                 "priority": False, "kind": False}


def _seconds(value: Any, low_open: bool) -> bool:
    """A finite number of seconds within the trace's range (above 0 when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not 0 <= value <= MAX_TRACE_SECONDS:  # NaN fails too
        return False
    return value > 0 or not low_open


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def trace_line_problem(raw: Any) -> str | None:
    """What is wrong with one parsed trace line (its field named first), else None."""
    if not isinstance(raw, dict):
        return f"a trace line must be a JSON object, got {type(raw).__name__}"
    unknown = sorted(set(raw) - set(_TRACE_FIELDS))
    if unknown:
        return f"{unknown[0]}: unknown field (known: {', '.join(_TRACE_FIELDS)})"
    missing = [name for name, required in _TRACE_FIELDS.items() if required and name not in raw]
    if missing:
        return f"{missing[0]}: missing (required: id, at, service, run_seconds)"
    checks = (
        ("id", _text, "non-empty text"), ("service", _text, "non-empty text"),
        ("at", lambda v: _seconds(v, False), f"seconds, 0 to {MAX_TRACE_SECONDS}"),
        ("run_seconds", lambda v: _seconds(v, True),
         f"seconds, above 0 and at most {MAX_TRACE_SECONDS}"),
        ("requirements", lambda v: isinstance(v, dict), "a JSON object"),
        ("payload", lambda v: isinstance(v, dict), "a JSON object"),
        ("models", lambda v: isinstance(v, list) and all(map(_text, v)), "a list of names"),
        ("model_gb", lambda v: isinstance(v, dict), "a JSON object of model: GB"),
        ("priority", lambda v: isinstance(v, int) and not isinstance(v, bool)
         and 0 <= v <= 100, "an integer, 0 to 100"),
        ("kind", lambda v: isinstance(v, str), "text"),
    )
    for name, valid, wanted in checks:
        if name in raw and not valid(raw[name]):
            return f"{name}: must be {wanted}, got {json.dumps(raw[name])[:40]}"
    for model, gb in (raw.get("model_gb") or {}).items():
        if isinstance(gb, bool) or not isinstance(gb, (int, float)) or not 0 < gb < math.inf:
            return f"model_gb.{model}: must be a size in GB above 0, got {json.dumps(gb)[:40]}"
    return None


def load_trace(path: str | Path, scale: float = 1.0) -> Scenario:
    """A JSONL trace (module docstring); the fleet follows the day curve times ``scale``."""
    jobs: list[TraceJob] = []
    sizes: dict[str, float] = {}
    first_line: dict[str, int] = {}
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line, object_pairs_hook=unique_object)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a trace job: {exc}") from None
            problem = trace_line_problem(raw)
            if problem:
                raise ValueError(f"{path}:{number}: {problem}")
            sizes.update({m: float(gb) for m, gb in (raw.pop("model_gb", None) or {}).items()})
            job = TraceJob(**raw)
            # A second job under one id was refused by the queue as a duplicate and took
            # the first one's outcome: the results counted one job, never completed.
            if job.id in first_line:
                raise ValueError(f"{path}:{number}: job id {job.id!r} is already the job of "
                                 f"line {first_line[job.id]}")
            first_line[job.id] = number
            jobs.append(job)
    jobs.sort(key=lambda job: (job.at, job.id))
    for job in jobs:
        for model in job.models:
            sizes.setdefault(model, DEFAULT_MODEL_GB)
    end = (max(job.at for job in jobs) + 1) if jobs else 0.0
    # From the hour the first job arrives in: the fleet is up before the first job.
    start = math.floor(min(job.at for job in jobs) / 3600) * 3600 if jobs else 0.0
    return Scenario(jobs, sizes, fleet_by_hour(scale), start, end)


def write_trace(jobs: Iterable[TraceJob], path: str | Path,
                model_gb: dict[str, float] | None = None) -> None:
    """Write jobs as a JSONL trace (each line carries its models' sizes when known)."""
    with open(path, "w") as out:
        for job in jobs:
            line = job.as_dict()
            if model_gb:
                line["model_gb"] = {m: model_gb[m] for m in job.models if m in model_gb}
            out.write(json.dumps(line) + "\n")
