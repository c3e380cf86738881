"""Drain rate of small jobs with and without a backlog that only an absent big worker serves.

Production shape: every job is its own workflow, so its own requirement class.
Per run, on an emptied private Redis: in the "backlog" runs, a big profile
(80 GB, no live worker) is registered and B jobs are filed that only it could
serve (40-80 GB, one workflow each, pipelined ``emp_enqueue``). Then, with
``emp_tasks.producer.submit``: three ``bench.hello`` jobs at priority 100 and
N small jobs (``bench.noop``, 4 GB, one workflow each over 1,000 customers).
Then three real Celery worker processes start (EMP stack, prefork,
concurrency 1, ``WORKER_GPU_MEMORY_GB=8``). Each takes one hello job, which
holds it until all three have one, so they start draining together: the
clock starts when the third hello arrives, so neither worker start-up nor
the producer is timed. Rate = small jobs done after that / time to the last.

Reported per run: jobs/s and Redis CPU µs per small job; the ratio
backlog/none of the mean rates (target >= 0.9). Quick: N=2,000, B=14,000,
one run each; full: N=6,000, B=14,000, two interleaved runs each (none,
backlog, none, backlog).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    emit_json,
    quick_args,
    redis_cpu_seconds,
    running_worker,
    start_redis,
    verdict,
    worker_env,
)
from capability_router.functions import QueueFunctions, ensure_library  # noqa: E402
from capability_router.jobspec import JobSpec  # noqa: E402
from capability_router.keys import DEFAULT_NAMESPACE  # noqa: E402
from capability_router.profile import WorkerProfile  # noqa: E402

WORKERS = 3
SMALL_GPU_GB = 8
BIG_GPU_STEPS = (40, 48, 80)
CUSTOMERS = 1000
RATIO_TARGET = 0.9
POLL_S = 0.01


def file_backlog(url: str, count: int) -> float:
    """Register the absent big profile and file ``count`` big-GPU workflows; returns seconds."""
    client = redis.Redis.from_url(url)
    functions = QueueFunctions(client, DEFAULT_NAMESPACE)
    big = WorkerProfile(worker_id="big-absent", services=["noop"],
                        hardware={"gpu_memory_gb": 80})
    functions.register_worker(big)
    t0 = time.monotonic()
    for first in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + 1000, count)):
            spec = JobSpec(service="noop", pool=DEFAULT_NAMESPACE,
                           requirements={"hardware": {
                               "gpu_memory_gb": BIG_GPU_STEPS[i % len(BIG_GPU_STEPS)]}},
                           workflow_id=f"big-wf-{i}", customer_id=f"c{i % CUSTOMERS}")
            message = json.dumps({"headers": {"id": f"big-{i}", "task": "bench.noop"},
                                  "properties": {}, "body": ""})
            name, keys, args = functions.enqueue_call(f"big-{i}", spec, message)
            pipe.fcall(name, len(keys), *keys, *args)
        for reply in pipe.execute():
            if reply[0] not in (b"queued", "queued"):
                raise RuntimeError(f"enqueue refused: {reply}")
    return time.monotonic() - t0


def wait_for(check: Any, timeout: float, what: str, procs: list[Any]) -> float:
    """Poll ``check()`` until true, returning the time it was; fails when a worker exits."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
        time.sleep(POLL_S)
    return time.monotonic()


def run_once(url: str, n: int, backlog: int, logdir: Path) -> dict[str, Any]:
    """One run on an emptied server (FLUSHALL keeps the function library)."""
    from bench import _noop_tasks as tasks
    from emp_tasks.producer import submit

    client = redis.Redis.from_url(url)
    client.flushall()
    ensure_library(client)
    fill_s = file_backlog(url, backlog) if backlog else 0.0
    for _ in range(WORKERS):
        submit("hello", {"workers": WORKERS}, priority=100, app=tasks.emp_app)
    for i in range(n):
        submit("noop", {}, requirements={"hardware": {"gpu_memory_gb": 4}},
               workflow_id=f"small-wf-{i}", customer_id=f"c{i % CUSTOMERS}",
               app=tasks.emp_app)
    with ExitStack() as stack:
        procs = []
        t0 = time.monotonic()
        for k in range(WORKERS):
            env = worker_env(url, WORKER_SERVICES="noop,hello", WORKER_ID=f"small-{k}",
                             WORKER_GPU_MEMORY_GB=str(SMALL_GPU_GB))
            log = logdir / f"small-{k}-{backlog}-{int(time.time() * 1000)}.log"
            procs.append(stack.enter_context(
                running_worker("emp_app", DEFAULT_NAMESPACE, env, 1, log)))
        ready = wait_for(lambda: client.scard(tasks.HELLO_KEY) >= WORKERS, 180,
                         "every worker holding a hello job", procs)
        done_at_ready = int(client.get(tasks.DONE_KEY) or 0)
        client.config_resetstat()
        cpu0 = redis_cpu_seconds(client)
        done = wait_for(lambda: int(client.get(tasks.DONE_KEY) or 0) >= n, 900,
                        f"{n} small jobs done", procs)
        measured = n - done_at_ready
        redis_us = (redis_cpu_seconds(client) - cpu0) * 1e6 / measured
        fcalls = client.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0)
    return {
        "jobs": n,
        "backlog": backlog,
        "backlog_fill_s": round(fill_s, 2),
        "workers_ready_s": round(ready - t0, 2),
        "done_before_clock": done_at_ready,
        "drain_s": round(done - ready, 3),
        "jobs_per_s": round(measured / (done - ready), 1),
        "redis_cpu_us_per_job": round(redis_us, 1),
        "fcalls_per_job": round(fcalls / measured, 2),
    }


def main() -> None:
    args = quick_args(__doc__)
    quick = args.quick
    n = 2000 if quick else 6000
    backlog = 14_000
    order = [0, backlog] if quick else [0, backlog, 0, backlog]
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "backlog": []}
    started = time.monotonic()
    url, stop = start_redis()
    os.environ["BENCH_REDIS_URL"] = url  # read by bench._noop_tasks at import
    os.environ["EMP_REDIS_URL"] = url
    with tempfile.TemporaryDirectory(prefix="emp-bench-logs-") as logdir, ExitStack() as stack:
        stack.callback(stop)
        for size in order:
            result = run_once(url, n, size, Path(logdir))
            label = "backlog" if size else "none"
            runs[label].append(result)
            print(f"{label:>7}: {n} small jobs, {size} big pending (filed in "
                  f"{result['backlog_fill_s']:.1f}s) -> {result['jobs_per_s']:.0f} jobs/s "
                  f"over {result['drain_s']:.1f}s, Redis CPU "
                  f"{result['redis_cpu_us_per_job']:.0f} us/job, "
                  f"{result['fcalls_per_job']} FCALLs/job", flush=True)
    mean = {k: round(sum(r["jobs_per_s"] for r in rs) / len(rs), 1) for k, rs in runs.items()}
    ratio = mean["backlog"] / mean["none"]
    print(f"mean jobs/s: without backlog {mean['none']:.0f}, with {mean['backlog']:.0f}; "
          f"ratio {ratio:.2f} (target >= {RATIO_TARGET}: {verdict(ratio >= RATIO_TARGET)})",
          flush=True)
    emit_json({
        "bench": "drain_backlog",
        "quick": quick,
        "jobs": n,
        "backlog": backlog,
        "workers": WORKERS,
        "runs": runs,
        "jobs_per_s_mean": mean,
        "ratio_backlog_over_none": round(ratio, 3),
        "redis_cpu_us_per_job_mean": {
            k: round(sum(r["redis_cpu_us_per_job"] for r in rs) / len(rs), 1)
            for k, rs in runs.items()},
        "target_ratio_min": RATIO_TARGET,
        "met": ratio >= RATIO_TARGET,
        "total_seconds": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
