"""Where a job's Redis CPU goes: each queue function's cost, split into its commands and Lua.

Issue 11 asks for at most 250 µs of Redis CPU per job; ``throughput_vs_celery``
measures the whole (about 500 µs here). This bench takes one job's life apart:
N jobs submitted through ``emp_tasks.producer.submit`` (the ``emp_enqueue`` a
client sends), then, from one client, N ``emp_claim`` (no job acknowledged
with it), N ``emp_start`` and N ``emp_complete``, the calls a worker's
transport and task base make, each phase on its own so that the server's
counters of that phase belong to one function. Per function: the server CPU of
one call (``INFO cpu``: parsing, running, answering), the time inside it
(``INFO commandstats``: ``fcall``), of that the Redis commands it calls (their
own ``commandstats`` rows) and the rest, the Lua around them (building key
names and JSON, calling into Redis). One request whose function does nothing
(``FCALL_RO emp_version``) gives the cost that each round trip sets, whatever
it does. R rounds (3; quick 2) of N jobs (2,000; quick 500); medians reported.
Then ``bench._lua_unit_costs``: what single Lua operations cost in the same server.
One worker, one service, no models: the shape of ``throughput_vs_celery``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, quick_args, redis_cpu_seconds, start_redis  # noqa: E402
from bench._lua_unit_costs import lua_unit_costs  # noqa: E402
from bench.throughput_vs_celery import REDIS_US_TARGET, request_cost_us  # noqa: E402

FUNCTIONS = ("emp_enqueue", "emp_claim", "emp_start", "emp_complete")
#: commandstats rows that are not the functions' inner commands.
OUTER = {"fcall", "fcall_ro", "info", "config|resetstat", "hello", "ping", "client|setinfo"}


def phase(client: redis.Redis, n: int, call: Any) -> dict[str, Any]:
    """Run ``call`` n times; the server's cost of it per call."""
    client.config_resetstat()
    cpu0 = redis_cpu_seconds(client)
    for _ in range(n):
        call()
    cpu = redis_cpu_seconds(client) - cpu0
    stats = client.info("commandstats")
    inside = {name.removeprefix("cmdstat_"): v for name, v in stats.items()}
    fcall = inside.get("fcall", {"usec": 0, "calls": 0})
    commands = {k: v for k, v in inside.items() if k not in OUTER}
    return {
        "server_cpu_us": cpu * 1e6 / n,
        "function_us": fcall["usec"] / n,
        "commands_us": sum(v["usec"] for v in commands.values()) / n,
        "commands_per_call": sum(v["calls"] for v in commands.values()) / n,
        "requests_per_call": fcall["calls"] / n,
        "top": sorted(((k, v["calls"] / n) for k, v in commands.items()),
                      key=lambda kv: -kv[1])[:6],
    }


def one_round(client: redis.Redis, n: int) -> dict[str, dict[str, Any]]:
    from bench import _noop_tasks as tasks
    from capability_router.functions import QueueFunctions
    from capability_router.profile import WorkerProfile
    from emp_tasks.producer import submit

    fns = QueueFunctions(client, "default")
    profile = WorkerProfile(worker_id="bench-1", services=["noop"])
    fns.register_worker(profile)
    claimed: list[Any] = []
    out = {"emp_enqueue": phase(client, n, lambda: submit("noop", {}, app=tasks.emp_app))}
    out["emp_claim"] = phase(client, n, lambda: claimed.append(
        fns.claim(profile.signature, "bench-1", 600_000, was_idle=False)))
    starting, ending = iter(claimed), iter(claimed)

    def start() -> None:
        job = next(starting)
        fns.start(job.job_id, job.attempt, "bench@host")

    def complete() -> None:
        job = next(ending)
        fns.complete(job.job_id, job.attempt, {"ok": True})

    out["emp_start"] = phase(client, n, start)
    out["emp_complete"] = phase(client, n, complete)
    return out


def main() -> None:
    args = quick_args(__doc__)
    n, rounds = (500, 2) if args.quick else (2000, 3)
    url, stop = start_redis()
    os.environ["BENCH_REDIS_URL"] = url
    os.environ["EMP_REDIS_URL"] = url
    started = time.monotonic()
    results: list[dict[str, dict[str, Any]]] = []
    try:
        client = redis.Redis.from_url(url)
        for _ in range(rounds):
            results.append(one_round(client, n))
        request_us = request_cost_us(client)
        units = lua_unit_costs(client)
    finally:
        stop()
    table: dict[str, dict[str, Any]] = {}
    for fn in FUNCTIONS:
        runs = [r[fn] for r in results]
        row = {key: round(statistics.median(run[key] for run in runs), 1)
               for key in ("server_cpu_us", "function_us", "commands_us", "commands_per_call",
                           "requests_per_call")}
        row["lua_us"] = round(row["function_us"] - row["commands_us"], 1)
        row["top_commands"] = {k: round(v, 2) for k, v in runs[-1]["top"]}
        table[fn] = row
    print(f"{n} jobs x {rounds} rounds; one request costs the server {request_us:.1f} µs "
          "whatever its command does", flush=True)
    print(f"{'function':14s} {'server CPU':>10s} {'in function':>11s} {'commands':>9s} "
          f"{'Lua':>6s} {'calls inside':>12s}  most called")
    for fn, row in table.items():
        top = ", ".join(f"{k} {v:g}" for k, v in row["top_commands"].items())
        print(f"{fn:14s} {row['server_cpu_us']:8.1f}µs {row['function_us']:9.1f}µs "
              f"{row['commands_us']:7.1f}µs {row['lua_us']:5.1f}µs {row['commands_per_call']:12.1f}"
              f"  {top}", flush=True)
    total = {key: round(sum(row[key] for row in table.values()), 1)
             for key in ("server_cpu_us", "function_us", "commands_us", "lua_us",
                         "commands_per_call")}
    requests = len(FUNCTIONS)
    print(f"{'per job':14s} {total['server_cpu_us']:8.1f}µs {total['function_us']:9.1f}µs "
          f"{total['commands_us']:7.1f}µs {total['lua_us']:5.1f}µs "
          f"{total['commands_per_call']:12.1f}", flush=True)
    print(f"of the {REDIS_US_TARGET} µs target, {requests} requests take "
          f"{requests * request_us:.0f} µs before any command runs; the functions' own Redis "
          f"commands take {total['commands_us']:.0f} µs and the Lua around them "
          f"{total['lua_us']:.0f} µs", flush=True)
    ops = units["per_op_ns"]
    listed = ", ".join(f"{k} {v:g}" for k, v in ops.items())
    print(f"Lua around the commands, one operation (ns): {listed}; "
          f"an FCALL running nothing takes {units['call_us']['no_arguments']:.1f} µs, "
          f"{units['call_us']['enqueue_arguments']:.1f} µs with an enqueue's 20 arguments; "
          f"a new string {ops['garbage']:g} ns beside the queue's library "
          f"({units['functions_vm_kb_with_queue_library']} KB of Lua), "
          f"{units['garbage_without_queue_library_ns']:g} ns without it", flush=True)
    emit_json({
        "bench": "redis_cost_per_job",
        "quick": args.quick,
        "jobs": n,
        "rounds": rounds,
        "per_function": table,
        "per_job": total,
        "redis_us_per_request": round(request_us, 1),
        "lua_unit_costs": units,
        "target_redis_us_per_job_max": REDIS_US_TARGET,
        "met": total["server_cpu_us"] <= REDIS_US_TARGET,
        "total_seconds": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
