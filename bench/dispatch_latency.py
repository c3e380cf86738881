"""Dispatch latency: from submit to task start on an idle matching worker, EMP vs stock Celery.

One private Redis; one worker at a time (prefork, concurrency 1, acks_late,
prefetch 1, no result backend), EMP first, then stock Celery on kombu's Redis
transport. The task ``bench.stamp`` (``bench/_noop_tasks.py``) gets the wall
time taken just before the submit call and pushes ``time.time() - submitted``
(ms) to a Redis list when its body starts. This process waits for that push
(BRPOP) before sleeping a random 5-50 ms and submitting the next job, so the
worker is idle, blocked on its wake-up list (EMP) or BRPOP (stock), at each
submit. The first 10 jobs per stack are warm-up and left out. Quick: 200 jobs
per stack; full: 1,000. Reported: p50/p99/mean/max ms per stack, how long the
submit call itself took (part of the latency) and the submitter's round trip
(submit to seeing the push). Targets (EMP): p50 <= 5 ms,
p99 <= 20 ms.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    emit_json,
    quick_args,
    running_worker,
    start_redis,
    summary,
    verdict,
    worker_env,
)

WARMUP = 10
P50_TARGET_MS = 5.0
P99_TARGET_MS = 20.0


def run_stack(stack: str, url: str, n: int, logdir: Path, rng: random.Random) -> dict[str, Any]:
    from bench import _noop_tasks as tasks
    from emp_tasks.producer import submit

    client = redis.Redis.from_url(url)
    client.delete(tasks.LATENCY_KEY)
    send: Callable[[float], Any]
    if stack == "emp":
        env = worker_env(url, WORKER_SERVICES="stamp", WORKER_ID="bench-latency-1")
        app, queue = "emp_app", "default"

        def send(now: float) -> None:
            submit("stamp", {"submitted": now}, app=tasks.emp_app)
    else:
        env = worker_env(url)
        app, queue = "stock_app", "stock"

        def send(now: float) -> None:
            tasks.stock_stamp.apply_async(kwargs={"submitted": now}, queue="stock")

    log = logdir / f"{stack}.log"
    latencies: list[float] = []
    round_trips: list[float] = []
    publish: list[float] = []
    with running_worker(app, queue, env, 1, log):
        for i in range(n + WARMUP):
            if i == WARMUP:
                client.config_resetstat()
            time.sleep(rng.uniform(0.005, 0.050))
            t0 = time.perf_counter()
            send(time.time())
            t1 = time.perf_counter()
            reply = client.brpop([tasks.LATENCY_KEY], timeout=60 if i == 0 else 10)
            if reply is None:
                raise TimeoutError(f"{stack}: job {i} did not start within the timeout")
            if i >= WARMUP:
                round_trips.append((time.perf_counter() - t0) * 1000.0)
                publish.append((t1 - t0) * 1000.0)
                latencies.append(float(reply[1]))
        stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): round(v["calls"] / n, 2) for name, v in stats.items()}
    wanted = ("fcall", "blpop", "brpop", "lpush", "time")
    return {"start_ms": summary(latencies), "publish_ms": summary(publish),
            "round_trip_ms": summary(round_trips),
            "redis_calls_per_job": {k: calls[k] for k in wanted if k in calls}}


def main() -> None:
    args = quick_args(__doc__)
    quick = args.quick
    n = 200 if quick else 1000
    rng = random.Random(11)
    url, stop = start_redis()
    os.environ["BENCH_REDIS_URL"] = url  # read by bench._noop_tasks at import
    os.environ["EMP_REDIS_URL"] = url
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="emp-bench-logs-") as logdir:
            for stack in ("emp", "stock"):
                result = run_stack(stack, url, n, Path(logdir), rng)
                results[stack] = result
                s, r = result["start_ms"], result["round_trip_ms"]
                p = result["publish_ms"]
                print(f"{stack:>5}: submit -> start p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, "
                      f"mean {s['mean']:.2f} ms, max {s['max']:.2f} ms (n={s['n']})", flush=True)
                print(f"       of which the submit call itself: p50 {p['p50']:.2f} ms, "
                      f"p99 {p['p99']:.2f} ms; submitter round trip p50 {r['p50']:.2f} ms, "
                      f"p99 {r['p99']:.2f} ms; redis calls/job {result['redis_calls_per_job']}",
                      flush=True)
    finally:
        stop()
    emp = results["emp"]["start_ms"]
    met_p50 = emp["p50"] <= P50_TARGET_MS
    met_p99 = emp["p99"] <= P99_TARGET_MS
    print(f"EMP p50 {emp['p50']:.2f} ms (target <= {P50_TARGET_MS:.0f}: {verdict(met_p50)}), "
          f"p99 {emp['p99']:.2f} ms (target <= {P99_TARGET_MS:.0f}: {verdict(met_p99)}); "
          f"stock p50 {results['stock']['start_ms']['p50']:.2f} ms, "
          f"p99 {results['stock']['start_ms']['p99']:.2f} ms", flush=True)
    emit_json({
        "bench": "dispatch_latency",
        "quick": quick,
        "jobs_per_stack": n,
        "warmup": WARMUP,
        "results": results,
        "emp_p50_ms": emp["p50"],
        "emp_p99_ms": emp["p99"],
        "stock_p50_ms": results["stock"]["start_ms"]["p50"],
        "stock_p99_ms": results["stock"]["start_ms"]["p99"],
        "targets": {"p50_ms_max": P50_TARGET_MS, "p99_ms_max": P99_TARGET_MS},
        "met": {"p50": met_p50, "p99": met_p99},
        "total_seconds": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
