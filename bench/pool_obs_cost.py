"""What pool observability adds to a claim and a completion, measured against the library before it.

Setup: two private Redis servers fed the same seeded workload; server A runs
the function library of a git ref without observability (``--baseline-ref``,
default ``main``), server B the library in this tree. Each has one pool of 100
workers (20 profiles of 5; each worker reports 10 of 50 models, 2 in the GPU,
so warm-first claims and model-hit classification run), their heartbeats in
the pool, and 2,000 pending jobs over the 50 models at random priorities.

Measurement: rounds alternate between the servers (A then B, ``--rounds``
times) so load from other processes hits both alike. A round sends 200
claims from random workers (pipelined), then starts and completes every job
claimed, then files as many new jobs; virtual time advances 100 ms per claim,
so the minute ring rolls over every 600 claims. Each function's server time
comes from SLOWLOG (``slowlog-log-slower-than 0``). Reported: p50/p99/mean µs of
claims that got a job, of completions, per server, and the difference; and
the memory of B's minute hashes (``MEMORY USAGE``): per minute, and so per pool
per day (1,440 minutes) and at most (the ring's 1,500 slots).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, emit_json, start_redis, summary  # noqa: E402
from capability_router.functions import QueueFunctions, claim_args, ensure_library  # noqa: E402
from capability_router.jobspec import JobSpec  # noqa: E402
from capability_router.keys import OBS_SLOTS, Keys  # noqa: E402
from capability_router.profile import WorkerProfile  # noqa: E402

POOL = "bench"
MODELS = [f"m{i:02d}" for i in range(50)]
LEASE_MS = 3_600_000
T0 = 1_800_000_000_000
STEP_MS = 100


def baseline_source(ref: str) -> str:
    """The library text at ``ref`` (git), loaded as is on the baseline server."""
    return subprocess.run(["git", "show", f"{ref}:capability_router/lua/emp.lua"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout


class Side:
    """One server and its copy of the workload."""

    def __init__(self, name: str, url: str, source: str | None, seed: int) -> None:
        self.name = name
        self.client = redis.Redis.from_url(url)
        if source is None:
            ensure_library(self.client)
        else:
            self.client.function_load(source, replace=True)
        self.queue = QueueFunctions(self.client, POOL)
        self.keys = Keys(POOL)
        self.rng = random.Random(seed)
        self.now = T0
        self.next_id = 0
        self.claim_us: list[float] = []
        self.complete_us: list[float] = []
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.config_set("slowlog-max-len", 100_000)

    def setup(self) -> None:
        profiles = [WorkerProfile.from_dict({
            "worker_id": f"p{i}", "services": ["simulation"],
            "models": {"simulation": MODELS}}) for i in range(20)]
        # One profile signature per worker group: workers differ by id only.
        self.workers: list[tuple[str, str]] = []
        for i, profile in enumerate(profiles):
            self.queue.register_worker(profile)
            for j in range(5):
                worker = f"w{i}-{j}"
                self.workers.append((profile.signature, worker))
                held = self.rng.sample(MODELS, 10)
                self.queue.residency(worker, [(m, "gpu" if k < 2 else "disk", 2 * 10**9)
                                              for k, m in enumerate(held)],
                                     mode="replace", profile_signature=profile.signature,
                                     now_ms=T0)
                self.client.zadd(self.keys.workers, {worker: T0 + 10**10})
        self.fill(2000)

    def fill(self, count: int) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                spec = JobSpec(service="simulation", priority=self.rng.randint(40, 60),
                               requirements={"models": [self.rng.choice(MODELS)]})
                name, keys, args = self.queue.enqueue_call(
                    f"j{self.next_id}", spec, "{}", 0, self.now)
                pipe.execute_command("FCALL", name, len(keys), *keys, *args)
                self.next_id += 1
            pipe.execute()

    def round(self, claims: int) -> None:
        self.client.slowlog_reset()
        with self.client.pipeline(transaction=False) as pipe:
            for _ in range(claims):
                self.now += STEP_MS
                psig, worker = self.rng.choice(self.workers)
                command = claim_args(self.keys, psig, worker, LEASE_MS, 5000)
                command[command.index(5000) + 1] = self.now  # ARGV[5]: now ms
                pipe.execute_command(*command)
            replies = pipe.execute()
        got = [(r[1].decode(), int(r[2])) for r in replies if int(r[0]) == 1]
        with self.client.pipeline(transaction=False) as pipe:
            for job_id, attempt in got:
                self.now += 1
                pipe.execute_command("FCALL", "emp_start", 2, self.keys.config,
                                     self.keys.job(job_id), job_id, attempt, "h", self.now, "")
                pipe.execute_command("FCALL", "emp_complete", 2, self.keys.config,
                                     self.keys.job(job_id), job_id, attempt, "null",
                                     self.now + STEP_MS)
            pipe.execute()
        entries = self.client.execute_command("SLOWLOG", "GET", -1)
        claim_us = [float(e[2]) for e in sorted(entries, key=lambda e: e[0])
                    if e[3][:2] == [b"FCALL", b"emp_claim"]]
        outcomes = [int(r[0]) == 1 for r in replies]
        self.claim_us += [us for us, ok in zip(claim_us, outcomes, strict=True) if ok]
        self.complete_us += [float(e[2]) for e in entries
                             if e[3][:2] == [b"FCALL", b"emp_complete"]]
        self.fill(len(got))

    def obs_memory(self) -> dict[str, Any]:
        slots = list(self.client.scan_iter(match=self.keys.prefix + "obs:*", count=1000))
        sizes = [int(self.client.memory_usage(k)) for k in slots]
        if not sizes:
            return {"slots": 0}
        state = int(self.client.memory_usage(self.keys.obs) or 0)
        mean = sum(sizes) / len(sizes)
        return {"slots": len(sizes), "bytes_per_minute_mean": round(mean),
                "bytes_per_minute_max": max(sizes), "state_bytes": state,
                "bytes_per_pool_day": round(mean * 1440 + state),
                "bytes_per_pool_max": max(sizes) * OBS_SLOTS + state}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="10 rounds (about 15 s)")
    parser.add_argument("--after-file", default=None,
                        help="a library file to load on server B instead of this tree's")
    args = parser.parse_args()
    rounds = 10 if args.quick else args.rounds
    url_a, stop_a = start_redis()
    url_b, stop_b = start_redis()
    try:
        a = Side("before", url_a, baseline_source(args.baseline_ref), seed=7)
        b = Side("after", url_b, Path(args.after_file).read_text() if args.after_file else None,
                 seed=7)
        for side in (a, b):
            side.setup()
        for _ in range(rounds):
            for side in (a, b):
                side.round(args.claims)
        result: dict[str, Any] = {"bench": "pool_obs_cost", "rounds": rounds,
                                  "baseline_ref": args.baseline_ref}
        for side in (a, b):
            result[side.name] = {"claim_us": summary(side.claim_us),
                                 "complete_us": summary(side.complete_us)}
        for what in ("claim_us", "complete_us"):
            before, after = result["before"][what], result["after"][what]
            result[f"{what}_added"] = {k: round(after[k] - before[k], 1)
                                       for k in ("p50", "p99", "mean")}
        result["memory"] = b.obs_memory()
        for side in (a, b):
            s = result[side.name]
            print(f"{side.name:>6}: claim p50 {s['claim_us']['p50']:.0f} us p99 "
                  f"{s['claim_us']['p99']:.0f} us mean {s['claim_us']['mean']:.1f} "
                  f"(n={s['claim_us']['n']}); complete p50 {s['complete_us']['p50']:.0f} us "
                  f"p99 {s['complete_us']['p99']:.0f} us mean {s['complete_us']['mean']:.1f}")
        print("added:", json.dumps({k: result[k] for k in ("claim_us_added",
                                                           "complete_us_added")}))
        print("memory:", json.dumps(result["memory"]))
        emit_json(result)
    finally:
        stop_a()
        stop_b()


if __name__ == "__main__":
    main()
