"""Worker memory at a steady load: does ``emp worker -P threads`` leak, or warm up?

Why: the production day (``bench/production_day.py --quick``) saw its
``-P threads`` workers' RSS grow 14-15% from minute 1 to the end of a 2-minute
run. This runs one such worker alone, as production_day starts it
(``emp worker -P threads``, ``WORKER_CONCURRENCY`` threads, serving
``simulation``), on a private Redis, and submits ``simulation`` jobs of 10
steps over 10 s (progress every second) straight to the queue at a steady
rate, open loop, in phases (``--phases RATE:SECONDS,...``; default 40/s for
4 min, then 60/s for 4 min: 400 jobs at once, then more jobs than the 550
slots). Every 10 s: the worker's RSS (its process group), its thread count
and the jobs completed so far. Reported: RSS at start (first sample under
load), at 1 min, at the end, growth from 1 min to the end, and the growth
over each phase's second half (whether memory levels off at a steady load);
RSS per completed job over the last phase (a leak grows with jobs done).

``--trace DIR`` runs the worker under ``bench/memtrace/sitecustomize.py``
(tracemalloc, a snapshot every 30 s in DIR; compare two with
``python bench/trace_monitor.py --compare A B``); tracing slows the worker,
so read RSS from an untraced run. ``--env NAME=VALUE`` sets the worker's
environment (e.g. ``MALLOC_ARENA_MAX=2``). Quick: 40/s for 60 s.

Found (2026-12-04, 2-core machine): warm-up, not a leak. RSS steps up with
each batch of new pool threads (``ThreadPoolExecutor`` starts them only when
no thread is idle: 70-85 KB each, with Celery's result backend, which is
thread-local, so each thread has its own Redis client and connection), then
levels off within ~2 min at a steady load: 40/s, 300 -> 420 s +1.2%; 60/s
(all 550 threads), the last 70 s +0.4% (~160 B per job, falling). Traced,
the Python heap stayed at 65-75 MB over 8,500 jobs. ``result_backend_thread_safe
= True`` (one backend for all threads) held 290 Redis connections instead of
900 and 10-14 MB less RSS at the same throughput; ``MALLOC_ARENA_MAX=2`` did
not help.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    ROOT,
    emit_json,
    group_processes,
    quick_args,
    start_redis,
    stop_worker,
    worker_env,
)
from bench.production_day import group_rss_mb, start_service  # noqa: E402
from capability_router.keys import Keys  # noqa: E402
from emp_tasks.app import create_app  # noqa: E402
from emp_tasks.producer import submit  # noqa: E402

THREADS = 550
STEPS, JOB_SECONDS = 10, 10.0
SAMPLE_SECONDS = 10.0
GROWTH_LIMIT = 0.10


def group_threads(pgid: int) -> int:
    """Threads of the live processes of a process group."""
    return sum(int(fields[17]) for _, fields in group_processes(pgid))  # field 20: num_threads


def completed(client: redis.Redis) -> int:
    """Jobs the worker finished so far (the ``completed`` listing index)."""
    return int(client.zcard(Keys("default").status_index("completed")))


def feed(app: Any, phases: list[tuple[float, float]], stop: threading.Event,
         sent: list[int]) -> None:
    """Submit ``simulation`` jobs open loop, phase after phase."""
    start = time.perf_counter()
    for rate, seconds in phases:
        n = int(rate * seconds)
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0 and stop.wait(delay):
                return
            submit("simulation", {"steps": STEPS, "duration": JOB_SECONDS}, app=app)
            sent[0] += 1
        start += seconds


def parse_phases(text: str) -> list[tuple[float, float]]:
    try:
        phases = [(float(r), float(s)) for r, s in (p.split(":") for p in text.split(","))]
    except ValueError:
        raise SystemExit(f"--phases: expected RATE:SECONDS,..., got {text!r}") from None
    if not phases or any(r <= 0 or s <= 0 for r, s in phases):
        raise SystemExit(f"--phases: rates and seconds must be positive, got {text!r}")
    return phases


def growth(rows: list[dict[str, Any]], t0: float, t1: float) -> float | None:
    """RSS growth from the first sample at or after t0 to the last at or before t1."""
    inside = [r for r in rows if t0 <= r["t"] <= t1]
    if len(inside) < 2:
        return None
    return round(inside[-1]["rss_mb"] / inside[0]["rss_mb"] - 1, 4)


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--phases", default="40:240,60:240",
                            help="RATE:SECONDS,... jobs/s and how long (default 40:240,60:240)")
        parser.add_argument("--threads", type=int, default=THREADS)
        parser.add_argument("--trace", metavar="DIR", help="tracemalloc snapshots into DIR")
        parser.add_argument("--frames", type=int, default=4)
        parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")

    args = quick_args(__doc__, extra)
    phases = [(40.0, 60.0)] if args.quick else parse_phases(args.phases)
    url, stop_redis = start_redis()
    client = redis.Redis.from_url(url)
    logs = Path(tempfile.mkdtemp(prefix="emp-bench-workermem-"))
    env = worker_env(url, WORKER_CONCURRENCY=str(args.threads), WORKER_SERVICES="simulation",
                     WORKER_ID="workermem-1")
    for item in args.env:
        name, _, value = item.partition("=")
        if not name or not _:
            raise SystemExit(f"--env: expected NAME=VALUE, got {item!r}")
        env[name] = value
    if args.trace:
        Path(args.trace).mkdir(parents=True, exist_ok=True)
        env.update(EMP_MEMTRACE_DIR=str(Path(args.trace).resolve()),
                   EMP_MEMTRACE_FRAMES=str(args.frames),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "bench" / "memtrace"),
                                               env["PYTHONPATH"]]))
    app = create_app(url)
    worker = start_service(["worker", "-P", "threads", "-l", "warning"], env,
                           logs / "worker.log")
    stop = threading.Event()
    sent = [0]
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(3)
        idle_mb = group_rss_mb(worker.pid)
        print(f"worker up, idle RSS {idle_mb:.1f} MB (log {logs / 'worker.log'})", flush=True)
        feeder = threading.Thread(target=feed, args=(app, phases, stop, sent), daemon=True)
        started = time.monotonic()
        feeder.start()
        total = sum(s for _, s in phases)
        while time.monotonic() - started < total + 0.5:
            time.sleep(SAMPLE_SECONDS - (time.monotonic() - started) % SAMPLE_SECONDS)
            if worker.poll() is not None:
                raise SystemExit(f"worker exited: {(logs / 'worker.log').read_text()[-2000:]}")
            row = {"t": round(time.monotonic() - started), "rss_mb": round(
                group_rss_mb(worker.pid), 1), "threads": group_threads(worker.pid),
                "sent": sent[0], "done": completed(client),
                "redis_clients": int(client.info("clients")["connected_clients"])}
            rows.append(row)
            print(f"  {row['t']:4d} s: RSS {row['rss_mb']:6.1f} MB, {row['threads']} threads, "
                  f"{row['sent']} sent, {row['done']} done, "
                  f"{row['redis_clients']} Redis clients", flush=True)
    finally:
        stop.set()
        stop_worker(worker, grace=5)
        stop_redis()
    at = {t: next((r for r in rows if r["t"] >= t), rows[-1]) for t in (0, 60)}
    first, minute, last = rows[0], at[60], rows[-1]
    halves, edge = [], 0.0
    for rate, seconds in phases:
        halves.append({"rate": rate, "seconds": seconds,
                       "growth_second_half": growth(rows, edge + seconds / 2, edge + seconds)})
        edge += seconds
    last_start = total - phases[-1][1]
    tail = [r for r in rows if r["t"] >= last_start + JOB_SECONDS]
    per_job = None
    if len(tail) >= 2 and tail[-1]["done"] > tail[0]["done"]:
        per_job = round((tail[-1]["rss_mb"] - tail[0]["rss_mb"]) * 2**20
                        / (tail[-1]["done"] - tail[0]["done"]))
    grew = round(last["rss_mb"] / minute["rss_mb"] - 1, 4)
    print(f"RSS: idle {idle_mb:.1f} MB, start {first['rss_mb']:.1f}, 1 min {minute['rss_mb']:.1f},"
          f" end {last['rss_mb']:.1f} MB: {grew:+.1%} from 1 min to the end "
          f"(target < {GROWTH_LIMIT:.0%}); {last['done']} jobs done, "
          f"{per_job} bytes of RSS per job over the last phase")
    for half in halves:
        print(f"  phase {half['rate']:g}/s x {half['seconds']:g} s: second half "
              f"{half['growth_second_half']}")
    emit_json({"bench": "worker_memory", "quick": args.quick, "threads": args.threads,
               "phases": phases, "env": args.env, "traced": bool(args.trace),
               "idle_mb": round(idle_mb, 1), "start_mb": first["rss_mb"],
               "minute_mb": minute["rss_mb"], "end_mb": last["rss_mb"],
               "growth_minute_to_end": grew, "phases_growth": halves,
               "rss_bytes_per_job_last_phase": per_job, "jobs_done": last["done"],
               "samples": rows})


if __name__ == "__main__":
    main()
