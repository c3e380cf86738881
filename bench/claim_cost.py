"""Server-side cost of one claim (``FCALL emp_claim``) as the pending backlog grows.

Setup: one private Redis, 1,000 registered worker profiles (random GPU memory,
region lists and tiers) and 1,000 requirement classes (gpu_memory_gb x region x
tier, each a distinct ``JobSpec.class_signature``). Pending jobs are filed with
pipelined ``FCALL emp_enqueue`` (built by ``QueueFunctions.enqueue_call``)
over random classes and priorities, to 1k, 10k and 100k pending jobs.

Measurement: at each level, claims from random profiles are sent in pipelined
batches; after each batch the same number of jobs is filed again, so the
backlog stays near the level. The claim's execution time on the server is read
from SLOWLOG (``slowlog-log-slower-than 0``), so client and network time are
excluded. Reported: p50/p99/mean µs of all claims and of successful ones per
level, and the growth p99(100k)/p99(1k). Targets: p99 <= 1000 µs, growth <= 2x.
Successful claims are also broken down by the number of classes the profile
can serve, and by whether it could serve one of the first 64 class heads (found
in the claim's first look) or not (the claim scans on, or looks up the head of
each class it can serve).

``--shape production`` runs the production shape instead (100k jobs over
20,000 workflows of 1,000 customers, 1,000 spread profiles; see
``bench/_claim_production.py``); ``--shape uniform`` the run above only. The
default runs both; the JSON line holds the uniform figures at its top level
and the production ones under ``production``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _claim_production as production  # noqa: E402
from bench._common import emit_json, quick_args, start_redis, summary, verdict  # noqa: E402
from capability_router.functions import QueueFunctions, claim_args, ensure_library  # noqa: E402
from capability_router.jobspec import JobSpec  # noqa: E402
from capability_router.profile import WorkerProfile  # noqa: E402

SERVICE = "render"
NAMESPACE = "bench"
N_CLASSES = 1000
N_PROFILES = 1000
GPU_STEPS = [0, 4, 8, 12, 16, 20, 24, 32, 40, 48]  # 10 x 10 regions x 10 tiers = 1,000
REGIONS = [f"r{i}" for i in range(10)]
LEASE_MS = 3_600_000  # no lease expires during the run
P99_TARGET_US = 1000.0
GROWTH_TARGET = 2.0
#: Claims are also broken down by how many classes the claiming profile can serve.
COMPAT_BUCKETS = [("1-31", 1, 31), ("32-127", 32, 127), ("128-299", 128, 299),
                  ("300+", 300, 10**9)]


def make_classes() -> list[JobSpec]:
    specs: list[JobSpec] = []
    for k in range(N_CLASSES):
        requirements = {
            "hardware": {"gpu_memory_gb": GPU_STEPS[k % 10]},
            "region": REGIONS[(k // 10) % 10],
            "tier": k // 100,
        }
        specs.append(JobSpec(service=SERVICE, requirements=requirements, pool=NAMESPACE))
    signatures = {s.class_signature for s in specs}
    if len(signatures) != N_CLASSES:
        raise SystemExit(f"expected {N_CLASSES} distinct classes, got {len(signatures)}")
    return specs


def make_profiles(rng: random.Random) -> list[WorkerProfile]:
    profiles: dict[str, WorkerProfile] = {}
    n = 0
    while len(profiles) < N_PROFILES:
        profile = WorkerProfile(
            worker_id=f"w{n}",
            services=[SERVICE],
            hardware={"gpu_memory_gb": rng.choice([8, 12, 16, 24, 24, 40, 48, 48, 80])},
            custom={
                "region": rng.sample(REGIONS, rng.randint(1, 5)),
                "tier": rng.randint(0, 9),
            },
        )
        profiles.setdefault(profile.signature, profile)
        n += 1
    return list(profiles.values())


class Filler:
    """Pipelined emp_enqueue calls built by QueueFunctions.enqueue_call."""

    def __init__(self, client: redis.Redis, specs: list[JobSpec], rng: random.Random) -> None:
        self.client = client
        self.keys = QueueFunctions(client, NAMESPACE).keys
        self.rng = rng
        self.functions = QueueFunctions(client, NAMESPACE)
        self.headers = [s.header() for s in specs]
        self.seq = 0

    def fill(self, count: int, batch: int = 2000, spread: bool = False) -> None:
        done = 0
        while done < count:
            pipe = self.client.pipeline(transaction=False)
            for i in range(min(batch, count - done)):
                idx = (done + i) % N_CLASSES if spread else self.rng.randrange(N_CLASSES)
                header = self.headers[idx]
                job_id = f"j{self.seq}"
                self.seq += 1
                priority = self.rng.choice((20, 50, 50, 50, 80))
                message = json.dumps({"headers": {"id": job_id, "task": "bench.render"},
                                      "properties": {}, "body": ""})
                name, keys, args = self.functions.enqueue_call(
                    job_id, {**header, "priority": priority}, message)
                pipe.fcall(name, len(keys), *keys, *args)
            for reply in pipe.execute():
                if reply[0] not in (b"queued", "queued"):
                    raise RuntimeError(f"enqueue refused: {reply}")
            done += min(batch, count - done)


def sample_level(
    client: redis.Redis, filler: Filler, profiles: list[WorkerProfile],
    compat: dict[str, set[bytes]], claims: int, batch: int, rng: random.Random,
) -> dict[str, Any]:
    k = filler.keys
    client.slowlog_reset()
    outcomes: list[bool] = []  # claim replies in the order sent: True = got a job
    chosen: list[int] = []  # compatible-class count of the claiming profile
    # True when the profile can serve none of the first 64 heads (seen at batch start): the
    # claim then scans on, or looks up the head of each class it can serve.
    fallback: list[bool] = []
    while len(outcomes) < claims:
        n = min(batch, claims - len(outcomes))
        front = set(client.zrange(k.heads, 0, 63))
        pipe = client.pipeline(transaction=False)
        for _ in range(n):
            profile = rng.choice(profiles)
            serves = compat[profile.signature]
            chosen.append(len(serves))
            fallback.append(not front & serves)
            pipe.execute_command(*claim_args(k, profile.signature, profile.worker_id,
                                             LEASE_MS, 5000))
        outcomes += [int(reply[0]) == 1 for reply in pipe.execute()]
        filler.fill(n, batch=n)  # keep the backlog at its level
    # Only this client talks to the server, so the logged claims (oldest first) line up
    # one-to-one with the replies and hits can be told from misses.
    entries = sorted(client.execute_command("SLOWLOG", "GET", -1), key=lambda e: e[0])
    all_us = [float(e[2]) for e in entries
              if len(e[3]) > 1 and e[3][0].upper() == b"FCALL" and e[3][1] == b"emp_claim"]
    if len(all_us) != claims:
        raise RuntimeError(f"SLOWLOG held {len(all_us)} of {claims} claims")
    hit_us = [us for us, hit in zip(all_us, outcomes, strict=True) if hit]
    miss_us = [us for us, hit in zip(all_us, outcomes, strict=True) if not hit]
    by_compat: dict[str, dict[str, float]] = {}
    for label, low, high in COMPAT_BUCKETS:
        picked = [us for us, n, hit in zip(all_us, chosen, outcomes, strict=True)
                  if hit and low <= n <= high]
        by_compat[label] = summary(picked)
    rows = list(zip(all_us, outcomes, fallback, strict=True))
    return {"claims": claims, "hits": len(hit_us), "misses": len(miss_us),
            "all_us": summary(all_us), "hit_us": summary(hit_us), "miss_us": summary(miss_us),
            "hit_us_by_compatible_classes": by_compat,
            "fallback_share": round(sum(fallback) / claims, 3),
            "hit_us_head_scan": summary([us for us, hit, fb in rows if hit and not fb]),
            "hit_us_fallback": summary([us for us, hit, fb in rows if hit and fb])}


def add_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=("all", "uniform", "production"), default="all",
                        help="which backlog shape to measure (default: both)")


def run_uniform(client: redis.Redis, quick: bool) -> dict[str, Any]:
    """The uniform run (module docstring); prints its lines, returns its figures."""
    levels = [1_000, 10_000, 100_000]
    claims_per_level = 1500 if quick else 5000
    batch = 100 if quick else 250
    rng = random.Random(7)
    started = time.monotonic()
    client.flushall()  # the function library stays
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 1_000_000)
    functions = QueueFunctions(client, NAMESPACE)
    specs = make_classes()
    profiles = make_profiles(rng)
    filler = Filler(client, specs, rng)

    # One job per class files every class first, then the profiles register; each
    # registration matches its profile against all 1,000 classes. Both orders do the
    # same 1,000 x 1,000 matches (about 4-5 s in all); timed both ways, they were
    # equal within the noise of this machine.
    t0 = time.monotonic()
    filler.fill(N_CLASSES, batch=100, spread=True)
    t_classes = time.monotonic() - t0
    t0 = time.monotonic()
    for profile in profiles:
        functions.register_worker(profile)
    t_register = time.monotonic() - t0
    compat_of = {p.signature: client.smembers(functions.keys.compat(p.signature))
                 for p in profiles}
    compat = [len(compat_of[p.signature]) for p in profiles]
    print(f"uniform shape: {N_CLASSES} classes filed in {t_classes:.2f}s, "
          f"{len(profiles)} profiles registered in {t_register:.2f}s", flush=True)
    print(f"compatible classes per profile: min {min(compat)}, "
          f"median {sorted(compat)[len(compat) // 2]}, max {max(compat)}", flush=True)

    results: dict[str, Any] = {}
    for level in levels:
        t0 = time.monotonic()
        missing = level - functions.pending_count()
        if missing > 0:
            filler.fill(missing)
        fill_s = time.monotonic() - t0
        claims = claims_per_level  # topped up after each batch, so may exceed level
        batch_n = min(batch, level // 5)
        t0 = time.monotonic()
        result = sample_level(client, filler, profiles, compat_of, claims, batch_n, rng)
        result["fill_seconds"] = round(fill_s, 2)
        result["sample_seconds"] = round(time.monotonic() - t0, 2)
        result["pending_after"] = functions.pending_count()
        results[str(level)] = result
        s = result["all_us"]
        print(f"{level:>7} pending: claim p50 {s['p50']:.0f} us, p99 {s['p99']:.0f} us "
              f"(target <= {P99_TARGET_US:.0f}: {verdict(s['p99'] <= P99_TARGET_US)}), "
              f"mean {s['mean']:.1f} us, max {s['max']:.0f} us; {result['hits']} hits, "
              f"{result['misses']} misses; filled in {fill_s:.1f}s", flush=True)
        parts = ", ".join(f"{label}: p50 {b['p50']:.0f} p99 {b['p99']:.0f} (n={b['n']})"
                          for label, b in result["hit_us_by_compatible_classes"].items())
        print(f"          hits by compatible classes of the profile: {parts}", flush=True)
        scan, fb = result["hit_us_head_scan"], result["hit_us_fallback"]
        print(f"          {result['fallback_share']:.0%} of claims by profiles serving none of "
              f"the first 64 heads: p50 {fb['p50']:.0f} p99 {fb['p99']:.0f} us; the others "
              f"p50 {scan['p50']:.0f} p99 {scan['p99']:.0f} us", flush=True)

    p99_lo = results["1000"]["all_us"]["p99"]
    p99_hi = results["100000"]["all_us"]["p99"]
    growth = p99_hi / p99_lo if p99_lo else float("nan")
    lo, hi = results["1000"]["all_us"], results["100000"]["all_us"]
    growth_p50, growth_mean = hi["p50"] / lo["p50"], hi["mean"] / lo["mean"]
    print(f"growth p99(100k)/p99(1k) = {growth:.2f}x "
          f"(target <= {GROWTH_TARGET:.0f}x: {verdict(growth <= GROWTH_TARGET)}); "
          f"for context p50 {growth_p50:.2f}x, mean {growth_mean:.2f}x", flush=True)
    info = client.info("memory")
    print(f"used memory {info['used_memory_human']}; total {time.monotonic() - started:.1f}s",
          flush=True)
    return {
        "profiles": len(profiles),
        "classes": N_CLASSES,
        "compat_per_profile": {"min": min(compat), "median": sorted(compat)[len(compat) // 2],
                               "max": max(compat)},
        "register_seconds": round(t_register, 2),
        "class_fill_seconds": round(t_classes, 2),
        "levels": results,
        "p99_us": {k: v["all_us"]["p99"] for k, v in results.items()},
        "p50_us": {k: v["all_us"]["p50"] for k, v in results.items()},
        "growth_p99_100k_over_1k": round(growth, 3),
        "growth_p50_100k_over_1k": round(growth_p50, 3),
        "growth_mean_100k_over_1k": round(growth_mean, 3),
        "targets": {"p99_us_max": P99_TARGET_US, "growth_max": GROWTH_TARGET},
        "met": {
            "p99": all(v["all_us"]["p99"] <= P99_TARGET_US for v in results.values()),
            "growth": growth <= GROWTH_TARGET,
        },
        "uniform_seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    args = quick_args(__doc__, add_shape)
    url, stop = start_redis()
    started = time.monotonic()
    try:
        client = redis.Redis.from_url(url)
        ensure_library(client)
        result: dict[str, Any] = {"bench": "claim_cost", "quick": args.quick, "shape": args.shape,
                                  "server": client.info("server").get("redis_version")}
        met: dict[str, bool] = {}
        if args.shape in ("all", "uniform"):
            result.update(run_uniform(client, args.quick))
            met.update(result.pop("met"))
        if args.shape in ("all", "production"):
            client.config_set("slowlog-log-slower-than", 0)
            result["production"] = production.run(client, args.quick)
            met.update({f"production_{k}": v for k, v in result["production"]["met"].items()})
        result["met"] = met
        result["total_seconds"] = round(time.monotonic() - started, 1)
        emit_json(result)
    finally:
        stop()


if __name__ == "__main__":
    main()
