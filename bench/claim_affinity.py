"""Server-side cost of a warm-first claim (``FCALL emp_claim`` with affinity on) at 100k pending.

Setup: one private Redis; 50 models; 250 requirement classes (one model x
5 GPU-memory steps); 200 worker profiles, each with 30 models on disk and a
GPU size; 1,000 workers (5 per profile), each reporting its residency
(``emp_residency``: its 30 models, 3 of them loaded in the GPU), so every
model is warm on about 60 workers. Delays are set to an hour
(``load_ms_disk``, ``affinity_max_delay_ms``) so that every job warm on
another worker stays left to it however old: the claim's dearest path (a
cold worker checks up to 8 families, each against the warm workers of its
model, and may find them all left to others). Pending jobs are filed over
random classes and priorities to 1k, 10k and 100k.

Measurement: at each level the same claims (random workers, pipelined) are
timed twice on the same backlog, first with ``affinity`` 0 (the baseline: the
claim of the core) and then 1; after each batch as many jobs are filed again.
Server time from SLOWLOG, as in ``claim_cost``. Reported: p50/p99/mean µs of
all claims, hits and deferrals (a claim that left every candidate to a warm
worker returns no job). Target: p99 <= 1000 µs at 100k pending with affinity on. SLOWLOG times are
wall time, so on a loaded machine they include preemption; the server's CPU
time per claim (INFO cpu around the claim pipelines) is reported beside them
and does not, and the load average is in the JSON line.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    emit_json,
    quick_args,
    redis_cpu_seconds,
    start_redis,
    summary,
    verdict,
)
from capability_router.functions import QueueFunctions, claim_args, ensure_library  # noqa: E402
from capability_router.jobspec import JobSpec  # noqa: E402
from capability_router.profile import WorkerProfile  # noqa: E402

SERVICE = "render"
NAMESPACE = "bench-affinity"
N_MODELS = 50
GPU_STEPS = [8, 12, 16, 24, 40]
N_PROFILES = 200
WORKERS_PER_PROFILE = 5
DISK_MODELS = 30
GPU_MODELS = 3
LEASE_MS = 3_600_000
P99_TARGET_US = 1000.0
MODELS = [f"model-{i:03d}" for i in range(N_MODELS)]


def make_classes() -> list[JobSpec]:
    return [JobSpec(service=SERVICE, pool=NAMESPACE, requirements={
        "models": [model], "hardware": {"gpu_memory_gb": gb}})
        for model in MODELS for gb in GPU_STEPS]


def make_workers(rng: random.Random) -> list[tuple[WorkerProfile, str, list[str]]]:
    """(profile, worker id, its models) for every worker."""
    workers = []
    for p in range(N_PROFILES):
        models = sorted(rng.sample(MODELS, DISK_MODELS))
        profile = WorkerProfile(worker_id=f"p{p}", services=[SERVICE],
                                hardware={"gpu_memory_gb": rng.choice([16, 24, 24, 40, 48])},
                                models={SERVICE: models})
        for w in range(WORKERS_PER_PROFILE):
            workers.append((profile, f"w{p}-{w}", models))
    return workers


class Filler:
    def __init__(self, client: redis.Redis, specs: list[JobSpec], rng: random.Random) -> None:
        self.client, self.rng = client, rng
        self.functions = QueueFunctions(client, NAMESPACE)
        self.headers = [s.header() for s in specs]
        self.seq = 0

    def fill(self, count: int, batch: int = 2000) -> None:
        done = 0
        while done < count:
            pipe = self.client.pipeline(transaction=False)
            n = min(batch, count - done)
            for _ in range(n):
                header = self.headers[self.rng.randrange(len(self.headers))]
                job_id = f"j{self.seq}"
                self.seq += 1
                message = json.dumps({"headers": {"id": job_id, "task": "bench.render"},
                                      "properties": {}, "body": ""})
                name, keys, args = self.functions.enqueue_call(
                    job_id, {**header, "priority": self.rng.choice((20, 50, 50, 50, 80))},
                    message)
                pipe.fcall(name, len(keys), *keys, *args)
            for reply in pipe.execute():
                if reply[0] not in (b"queued", "queued"):
                    raise RuntimeError(f"enqueue refused: {reply}")
            done += n


def sample(client: redis.Redis, filler: Filler, workers: list, claims: int, batch: int,
           rng: random.Random) -> dict[str, Any]:
    keys = filler.functions.keys
    client.slowlog_reset()
    outcomes: list[bool] = []
    cpu = 0.0
    while len(outcomes) < claims:
        n = min(batch, claims - len(outcomes))
        pipe = client.pipeline(transaction=False)
        for _ in range(n):
            profile, worker_id, _ = rng.choice(workers)
            pipe.execute_command(*claim_args(keys, profile.signature, worker_id, LEASE_MS, 5000))
        before = redis_cpu_seconds(client)
        replies = pipe.execute()
        cpu += redis_cpu_seconds(client) - before
        got = [int(r[0]) == 1 for r in replies]
        outcomes += got
        filler.fill(sum(got) or 1, batch=n)
    entries = sorted(client.execute_command("SLOWLOG", "GET", -1), key=lambda e: e[0])
    all_us = [float(e[2]) for e in entries
              if len(e[3]) > 1 and e[3][0].upper() == b"FCALL" and e[3][1] == b"emp_claim"]
    if len(all_us) != claims:
        raise RuntimeError(f"SLOWLOG held {len(all_us)} of {claims} claims")
    pairs = list(zip(all_us, outcomes, strict=True))
    return {"claims": claims, "hits": sum(outcomes),
            "server_cpu_us_per_claim": round(cpu * 1e6 / claims, 1),
            "all_us": summary(all_us), "hit_us": summary([u for u, h in pairs if h]),
            "miss_us": summary([u for u, h in pairs if not h])}


def main() -> None:
    args = quick_args(__doc__)
    url, stop = start_redis()
    started = time.monotonic()
    try:
        client = redis.Redis.from_url(url)
        ensure_library(client)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 1_000_000)
        rng = random.Random(11)
        functions = QueueFunctions(client, NAMESPACE)
        functions.configure(load_ms_disk=3_600_000, affinity_max_delay_ms=3_600_000)
        specs = make_classes()
        workers = make_workers(rng)
        filler = Filler(client, specs, rng)
        filler.fill(len(specs))
        for profile in {p.signature: p for p, _, _ in workers}.values():
            functions.register_worker(profile)
        pipe = client.pipeline(transaction=False)
        for profile, worker_id, models in workers:
            warm = set(rng.sample(models, GPU_MODELS))
            changes = [(m, "gpu" if m in warm else "disk", None) for m in models]
            args_ = [worker_id, 0, profile.signature, "replace"]
            for model, tier, _ in changes:
                args_ += [model, tier, ""]
            pipe.fcall("emp_residency", 1, functions.keys.config, *args_)
        pipe.execute()
        warm_per_model = [client.zcard(functions.keys.warm(m)) for m in MODELS]
        print(f"{len(specs)} classes, {len(workers)} workers of {N_PROFILES} profiles; "
              f"warm workers per model: median {sorted(warm_per_model)[N_MODELS // 2]}",
              flush=True)
        levels = [1_000, 100_000] if args.quick else [1_000, 10_000, 100_000]
        claims = 1500 if args.quick else 5000
        results: dict[str, Any] = {}
        for level in levels:
            missing = level - functions.pending_count()
            if missing > 0:
                filler.fill(missing)
            row: dict[str, Any] = {}
            for mode in ("off", "on"):
                functions.configure(affinity=1 if mode == "on" else 0)
                row[mode] = sample(client, filler, workers, claims, min(100, level // 5), rng)
            row["pending_after"] = functions.pending_count()
            results[str(level)] = row
            off, on = row["off"]["all_us"], row["on"]["all_us"]
            print(f"{level:>7} pending: affinity off p50 {off['p50']:.0f} p99 {off['p99']:.0f} us"
                  f" | on p50 {on['p50']:.0f} p99 {on['p99']:.0f} us (target <= "
                  f"{P99_TARGET_US:.0f}: {verdict(on['p99'] <= P99_TARGET_US)}); on: "
                  f"{row['on']['hits']} hits, {claims - row['on']['hits']} deferred "
                  f"(p99 {row['on']['miss_us']['p99']:.0f} us); server CPU per claim "
                  f"off {row['off']['server_cpu_us_per_claim']:.0f} us, on "
                  f"{row['on']['server_cpu_us_per_claim']:.0f} us", flush=True)
        top = results[str(levels[-1])]
        emit_json({
            "bench": "claim_affinity", "quick": args.quick,
            "server": client.info("server").get("redis_version"),
            "classes": len(specs), "workers": len(workers), "models": N_MODELS,
            "levels": results,
            "p99_us_on": {k: v["on"]["all_us"]["p99"] for k, v in results.items()},
            "p99_us_off": {k: v["off"]["all_us"]["p99"] for k, v in results.items()},
            "cpu_us_per_claim_on": {k: v["on"]["server_cpu_us_per_claim"]
                                    for k, v in results.items()},
            "cpu_us_per_claim_off": {k: v["off"]["server_cpu_us_per_claim"]
                                     for k, v in results.items()},
            "load_average": list(os.getloadavg()),
            "p99_ratio_on_over_off_100k": round(
                top["on"]["all_us"]["p99"] / top["off"]["all_us"]["p99"], 3),
            "targets": {"p99_us_max": P99_TARGET_US},
            "met": {"p99": top["on"]["all_us"]["p99"] <= P99_TARGET_US},
            "total_seconds": round(time.monotonic() - started, 1),
        })
    finally:
        stop()


if __name__ == "__main__":
    main()
