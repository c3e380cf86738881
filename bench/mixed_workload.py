"""Mixed workload on real workers: one uniform pool against pools + routing + warm-first.

The same fleet of 8 ``emp worker`` processes (simulation connector, one job
at a time, a modelled GPU with LRU eviction and seconds-long disk -> GPU
loads) runs the same open-loop workload twice in one run, each time on a
fresh private Redis:

A) ``uniform``: all 8 workers consume one pool ("default"), no pools file
   (no routing), ``EMP_AFFINITY=0`` (claims in queue order).
B) ``pools``: a pools file (fast, standard, heavy) with routing on
   (``EMP_POOLS_FILE`` in the submitting process), ``EMP_AFFINITY=1``; the
   2 small workers serve ``fast``, the 4 medium ``standard``, the 2 big
   ``heavy``.

The hardware is the same in both: 2 small workers (no GPU memory
advertised, an 8 GB model cache: CPU-ish), 4 medium (24 GB), 2 big (48 GB).
20 models, on disk everywhere, none loaded at start: 8 text models of 2 GB,
8 image models of 6 GB, 4 video models of 16 GB. Jobs (seed 13) arrive as
a Poisson process: 65% text-like (1-3 steps, about 0.5 s), 30% image-like
(1024x1024, about 2.5 s, asking 16 GB GPU memory), 5% video-like (frames,
about 8 s, asking 40 GB); each kind picks its model with Zipf popularity
(s = 1.1). Run time is the job's work units times a per-unit cost, with
log-normal noise; a cold model adds the disk -> GPU load time (2 s quick).

Reported per setup: wait (submit -> started) p50/p95, wait plus model load
(submit -> first step) p50/p95, share of jobs that found their models warm
(the simulation result's ``cold``), model loads, total busy worker-seconds
(started -> completed summed), makespan (first submit -> last completion),
completed count, and where B routed each kind. Quick: 50 s of arrivals at
2.5 jobs/s; full: 300 s at the same load with every time doubled. Final
line: JSON with both setups and the B/A ratios.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, emit_json, percentile, quick_args, start_redis  # noqa: E402

SEED = 13
ZIPF_S = 1.1
NOISE_SIGMA = 0.25
#: Seconds of run time per work unit (simulation's unit: one step of a 1024x1024 image
#: or frame), at scale 1.
SECONDS_PER_UNIT = 0.25
#: disk -> GPU load seconds, at scale 1.
DISK_LOAD_SECONDS = 2.0
MIX = {"text": 0.65, "image": 0.30, "video": 0.05}
MODELS = {
    "text": [f"text-{i}" for i in range(8)],
    "image": [f"image-{i}" for i in range(8)],
    "video": [f"video-{i}" for i in range(4)],
}
MODEL_GB = {"text": 2, "image": 6, "video": 16}
#: Hardware per worker: (name, count, GPU memory advertised, model cache GB, pool in B).
FLEET = [("small", 2, 0, 8, "fast"), ("medium", 4, 24, 24, "standard"),
         ("big", 2, 48, 48, "heavy")]
FINAL = ("completed", "failed", "cancelled")


def pools_toml(scale: float) -> str:
    """The bench's pools file: duration ranges and priors in the workload's time scale."""
    def pool(name: str, order: int, gpu: bool, memory: tuple[int, int],
             durations: tuple[float, float]) -> str:
        return (f"[pools.{name}]\norder = {order}\ngpu = {str(gpu).lower()}\n"
                f"gpu_memory_gb = [{memory[0]}, {memory[1]}]\nstorage_gb = 100\n"
                f"durations_seconds = [{durations[0] * scale:g}, {durations[1] * scale:g}]\n"
                f'services = ["simulation"]\n\n')
    return (f"[routing]\nspill_wait_seconds = {3.0 * scale:g}\n\n"
            + pool("fast", 1, False, (0, 0), (0, 1.8))
            + pool("standard", 2, True, (16, 24), (1.8, 5.5))
            + pool("heavy", 3, True, (40, 80), (5.5, 3600))
            + f"[priors]\ndefault_seconds_per_unit = {SECONDS_PER_UNIT * scale:g}\n\n"
            + f"[priors.services.simulation]\nseconds_per_unit = {SECONDS_PER_UNIT * scale:g}\n")


def zipf_pick(rng: random.Random, names: list[str]) -> str:
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(names))]
    return rng.choices(names, weights)[0]


def workload(seconds: float, rate: float, scale: float) -> list[dict[str, Any]]:
    """The jobs, each with its arrival offset (s), kind, model, payload and requirements."""
    rng = random.Random(SEED)
    jobs, at = [], 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= seconds:
            return jobs
        kind = rng.choices(list(MIX), list(MIX.values()))[0]
        model = zipf_pick(rng, MODELS[kind])
        if kind == "text":
            payload: dict[str, Any] = {"steps": rng.randint(1, 3)}
            units, hardware = payload["steps"], None
        elif kind == "image":
            payload = {"steps": rng.randint(8, 12), "width": 1024, "height": 1024}
            units, hardware = payload["steps"], 16
        else:
            payload = {"steps": 8, "width": 512, "height": 512, "frames": rng.randint(12, 20)}
            units, hardware = payload["steps"] * payload["frames"] / 4, 40
        payload["duration"] = round(
            units * SECONDS_PER_UNIT * scale * math.exp(rng.gauss(0, NOISE_SIGMA)), 3)
        requirements: dict[str, Any] = {"models": [model]}
        if hardware:
            requirements["hardware"] = {"gpu_memory_gb": hardware}
        jobs.append({"at": at, "kind": kind, "model": model, "payload": payload,
                     "requirements": requirements})


def worker_env(url: str, size: str, memory: int, cache_gb: int, pools: str,
               affinity: bool, scale: float, worker_id: str) -> dict[str, str]:
    sizes = ",".join(f"{m}:{MODEL_GB[kind]}" for kind, names in MODELS.items() for m in names)
    return {
        **os.environ, "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": url, "WORKER_ID": worker_id,
        "WORKER_SERVICES": "simulation", "WORKER_POOLS": pools,
        "WORKER_GPU_MEMORY_GB": str(memory), "EMP_CONNECTOR": "simulation",
        "EMP_HEALTH_GATE": "off", "EMP_SIMULATION_MODELS": ",".join(
            m for names in MODELS.values() for m in names),
        "EMP_SIMULATION_MODEL_SIZES": sizes, "EMP_SIMULATION_GPU_MEMORY_GB": str(cache_gb),
        "EMP_SIMULATION_DISK_LOAD_SECONDS": str(DISK_LOAD_SECONDS * scale),
        "EMP_SIMULATION_PROGRESS_INTERVAL_SECONDS": "1",
        "EMP_AFFINITY": "1" if affinity else "0",
        "EMP_LOAD_SECONDS_DISK": str(DISK_LOAD_SECONDS * scale),
        "EMP_AFFINITY_MAX_DELAY_SECONDS": str(DISK_LOAD_SECONDS * scale),
    }


def start_fleet(url: str, setup: str, scale: float, logdir: Path) -> list[tuple[Any, str, str]]:
    """Start the 8 workers; returns (process, worker id, pool) each."""
    procs = []
    for size, count, memory, cache_gb, pool in FLEET:
        pool = pool if setup == "pools" else "default"
        for n in range(count):
            worker_id = f"{size}-{n}"
            env = worker_env(url, size, memory, cache_gb, pool, setup == "pools", scale,
                             worker_id)
            if setup == "pools":
                env["EMP_POOLS_FILE"] = os.environ["EMP_POOLS_FILE"]
            log = open(logdir / f"{setup}-{worker_id}.log", "wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "emp_tasks.cli", "worker", "-l", "warning", "-c", "1"],
                env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
            log.close()
            procs.append((proc, worker_id, pool))
    return procs


def wait_ready(client: Any, procs: list[tuple[Any, str, str]], logdir: Path, setup: str,
               timeout: float = 180.0) -> None:
    """Every worker has asked its pool for work once (it marked itself idle)."""
    from capability_router.keys import Keys, idle_workers

    deadline = time.monotonic() + timeout
    waiting = {(worker_id, pool) for _, worker_id, pool in procs}
    while waiting and time.monotonic() < deadline:
        for proc, worker_id, _ in procs:
            if proc.poll() is not None:
                tail = (logdir / f"{setup}-{worker_id}.log").read_text()[-2000:]
                raise RuntimeError(f"worker {worker_id} exited: {tail}")
        waiting = {(w, p) for w, p in waiting
                   if w not in idle_workers(client.zrange(Keys(p).idle, 0, -1))}
        time.sleep(0.2)
    if waiting:
        raise TimeoutError(f"workers not ready: {sorted(waiting)}")


def stop_fleet(procs: list[tuple[Any, str, str]]) -> None:
    for proc, _, _ in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc, _, _ in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def run_setup(setup: str, jobs: list[dict[str, Any]], scale: float, pools_file: Path,
              logdir: Path) -> dict[str, Any]:
    """One setup on a fresh Redis and fresh workers; returns its figures."""
    import redis

    from capability_router.pools import POOLS_FILE_ENV

    url, stop = start_redis()
    if setup == "pools":
        os.environ[POOLS_FILE_ENV] = str(pools_file)
    else:
        os.environ.pop(POOLS_FILE_ENV, None)
    procs: list[tuple[Any, str, str]] = []
    try:
        from capability_router.functions import ensure_library
        from emp_tasks.app import create_app
        from emp_tasks.producer import get_job, submit

        client = redis.Redis.from_url(url, decode_responses=True)
        ensure_library(client)
        app = create_app(url)
        procs = start_fleet(url, setup, scale, logdir)
        wait_ready(client, procs, logdir, setup)
        print(f"[{setup}] 8 workers ready; submitting {len(jobs)} jobs", flush=True)
        ids: list[tuple[str, dict[str, Any]]] = []
        start = time.monotonic()
        for job in jobs:
            delay = start + job["at"] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            result = submit("simulation", dict(job["payload"]),
                            requirements=job["requirements"], app=app)
            ids.append((result.id, job))
        records: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 300 * scale
        while len(records) < len(ids) and time.monotonic() < deadline:
            for job_id, _ in ids:
                if job_id not in records:
                    record = get_job(job_id, app=app)
                    if record.get("status") in FINAL:
                        records[job_id] = record
            time.sleep(0.5)
        app.close()
    finally:
        stop_fleet(procs)
        os.environ.pop(POOLS_FILE_ENV, None)
        stop()
    return figures(setup, ids, records)


def figures(setup: str, ids: list[tuple[str, dict[str, Any]]],
            records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    done = [(records[i], job) for i, job in ids
            if records.get(i, {}).get("status") == "completed"]
    waits = [(r["started_at"] - r["created_at"]) / 1000 for r, _ in done]
    loads = [float((r.get("result") or {}).get("load_seconds") or 0) for r, _ in done]
    ready = [w + load for w, load in zip(waits, loads, strict=True)]
    cold = [bool((r.get("result") or {}).get("cold")) for r, _ in done]
    busy = sum((r["completed_at"] - r["started_at"]) / 1000 for r, _ in done)
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in MIX:
        rows = [(w, c, r) for w, c, (r, job) in zip(waits, cold, done, strict=True)
                if job["kind"] == kind]
        pools: dict[str, int] = {}
        for _, _, r in rows:
            pools[r.get("pool", "default")] = pools.get(r.get("pool", "default"), 0) + 1
        routed: dict[str, int] = {}
        for _, _, r in rows:
            why = route_class(r.get("routing"))
            routed[why] = routed.get(why, 0) + 1
        predicted = [r["predicted_ms"] / 1000 for _, _, r in rows if r.get("predicted_ms")]
        per_kind[kind] = {
            "completed": len(rows),
            "routing": routed,
            "predicted_p50_s": round(percentile(predicted, 50), 3),
            "run_p50_s": round(percentile(
                [(r["completed_at"] - r["started_at"]) / 1000 for _, _, r in rows], 50), 3),
            "wait_p50_s": round(percentile([w for w, _, _ in rows], 50), 3),
            "wait_p95_s": round(percentile([w for w, _, _ in rows], 95), 3),
            "warm_share": round(1 - sum(c for _, c, _ in rows) / len(rows), 3) if rows else None,
            "pools": pools,
        }
    first = min((r["created_at"] for r, _ in done), default=0)
    last = max((r["completed_at"] for r, _ in done), default=0)
    return {
        "setup": setup, "submitted": len(ids), "completed": len(done),
        "not_completed": len(ids) - len(done),
        "wait_p50_s": round(percentile(waits, 50), 3),
        "wait_p95_s": round(percentile(waits, 95), 3),
        "wait_plus_load_p50_s": round(percentile(ready, 50), 3),
        "wait_plus_load_p95_s": round(percentile(ready, 95), 3),
        "warm_share": round(1 - sum(cold) / len(cold), 3) if cold else None,
        "model_loads": sum(cold),
        "load_seconds_total": round(sum(loads), 1),
        "busy_worker_seconds": round(busy, 1),
        "makespan_s": round((last - first) / 1000, 1),
        "share_waited_under_10s": round(sum(w < 10 for w in waits) / len(waits), 3)
        if waits else None,
        "by_kind": per_kind,
    }


def route_class(routing: Any) -> str:
    """Which rule chose the pool, from the routing reason on the job ("none": not routed)."""
    if not isinstance(routing, dict):
        return "none"
    reason = str(routing.get("reason", ""))
    if reason.startswith("spilled over"):
        return "spilled over"
    if "fits no pool" in reason:
        return "nearest range"
    if "no live worker" in reason:
        return "no live worker"
    if "warm" in reason:
        return "warm"
    return "duration fits" if " fits " in reason else "other"


def main() -> None:
    args = quick_args(__doc__)
    seconds, rate, scale = (50.0, 2.5, 1.0) if args.quick else (300.0, 1.25, 2.0)
    jobs = workload(seconds, rate, scale)
    logdir = Path(tempfile.mkdtemp(prefix="emp-bench-mixed-"))
    pools_file = logdir / "pools.toml"
    pools_file.write_text(pools_toml(scale))
    started = time.monotonic()
    uniform = run_setup("uniform", jobs, scale, pools_file, logdir)
    pools = run_setup("pools", jobs, scale, pools_file, logdir)
    elapsed = time.monotonic() - started

    def ratio(key: str) -> float | None:
        a, b = uniform.get(key), pools.get(key)
        return round(b / a, 3) if a and b is not None else None

    keys = ["completed", "wait_p50_s", "wait_p95_s", "wait_plus_load_p50_s",
            "wait_plus_load_p95_s", "warm_share", "model_loads", "load_seconds_total",
            "busy_worker_seconds", "makespan_s", "share_waited_under_10s"]
    print(f"\n{len(jobs)} jobs over {seconds:g} s (mix {MIX}), 8 workers, scale {scale:g}")
    print(f"{'':26}{'A uniform':>12}{'B pools':>12}{'B/A':>8}")
    for key in keys:
        r = ratio(key)
        print(f"{key:26}{uniform[key]!s:>12}{pools[key]!s:>12}"
              f"{'' if r is None else f'{r:.2f}':>8}")
    for kind in MIX:
        a, b = uniform["by_kind"][kind], pools["by_kind"][kind]
        print(f"  {kind:6} wait p50/p95 A {a['wait_p50_s']}/{a['wait_p95_s']} s, "
              f"B {b['wait_p50_s']}/{b['wait_p95_s']} s; warm A {a['warm_share']} "
              f"B {b['warm_share']}; B pools {b['pools']}, why {b['routing']}; predicted "
              f"p50 {b['predicted_p50_s']} s, ran {b['run_p50_s']} s")
    print(f"worker logs: {logdir}; {elapsed:.0f} s in all")
    emit_json({
        "benchmark": "mixed_workload", "quick": args.quick, "seed": SEED, "jobs": len(jobs),
        "arrival_seconds": seconds, "rate_per_s": rate, "scale": scale, "mix": MIX,
        "models": sum(len(v) for v in MODELS.values()), "zipf_s": ZIPF_S,
        "disk_load_seconds": DISK_LOAD_SECONDS * scale, "workers": 8,
        "fleet": [{"size": s, "count": c, "gpu_memory_gb": g, "model_cache_gb": m,
                   "pool_in_b": p} for s, c, g, m, p in FLEET],
        "uniform": uniform, "pools": pools,
        "ratios_b_over_a": {key: ratio(key) for key in keys},
        "seconds": round(elapsed, 1),
    })


if __name__ == "__main__":
    main()
