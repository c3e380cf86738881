"""Throughput of no-op jobs on a local Redis Cluster (3 masters, 3 replicas), with and
without the enqueue's ``WAIT 1`` (an accepted job is on a replica).

A cluster of six ``redis-server`` processes (append-only on, everysec) is
started in a temporary directory; three pools are chosen whose hash tags land
on the three masters. Per run, in a subprocess (the enqueue's WAIT is read
from ``EMP_ENQUEUE_REPLICAS`` when a producer starts): one EMP worker
(prefork, concurrency 2) serves the three pools; after a warm-up job per
pool, N ``bench.noop`` jobs are submitted round robin (``submit``, timed one
by one) and drained (the task INCRs a counter). Reported per run: jobs/s over
submit+drain, submit latency p50/p99, and Redis CPU per job on each master
(``INFO cpu`` before and after, divided by the jobs of that master's pool;
also net of the shard's idle CPU, measured for 3 s before) with its calls
per job (``INFO commandstats``). Before that, the idle dispatch latency:
``bench.stamp`` jobs sent one at a time to the idle worker, round robin over
the pools (it waits on one pool's wake-up list at a time). Runs alternate:
without WAIT, with WAIT (quick: one each, 1,000 jobs; full: two each, 5,000
jobs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    emit_json,
    group_cpu_seconds,
    quick_args,
    running_worker,
    summary,
    worker_env,
)

CONCURRENCY = 2
#: Seconds the shards' idle CPU is measured for.
IDLE_SECONDS = 3.0
POLL_S = 0.005
CANDIDATES = [f"shard{i}" for i in range(40)]


def pools_per_master(cluster: Any, client: Any) -> dict[int, str]:
    """One pool name per master port."""
    from capability_router.keys import Keys

    chosen: dict[int, str] = {}
    for name in CANDIDATES:
        port = cluster.port_of_slot(client.keyslot(Keys(name).config))
        chosen.setdefault(port, name)
        if len(chosen) == cluster.masters:
            return chosen
    raise RuntimeError("no pool name for every master")


def idle_dispatch(client: Any, names: list[str], tasks: Any, count: int) -> dict[str, float]:
    """Submit -> start delay (ms) of jobs sent one at a time to an idle worker of every pool,
    round robin: the worker waits on one pool's wake-up list at a time."""
    from emp_tasks.producer import submit

    client.delete(tasks.LATENCY_KEY)
    for i in range(count):
        time.sleep(0.15 + (i % 7) * 0.011)  # idle again, at varying points of its turn
        submit("stamp", {"submitted": time.time()}, pool=names[i % len(names)], app=tasks.emp_app)
        deadline = time.monotonic() + 30
        while client.llen(tasks.LATENCY_KEY) <= i and time.monotonic() < deadline:
            time.sleep(0.002)
    return summary([float(x) for x in client.lrange(tasks.LATENCY_KEY, 0, -1)])


def child(n: int, pools: dict[int, str], logdir: Path, idle_jobs: int) -> dict[str, Any]:
    """One run in this process (its environment says WAIT or not)."""
    import redis

    from bench import _noop_tasks as tasks
    from capability_router.cluster import make_client
    from emp_tasks.producer import submit

    client = make_client(os.environ["EMP_REDIS_URL"])
    masters = {port: redis.Redis(port=port) for port in pools}
    names = list(pools.values())
    env = worker_env(os.environ["EMP_REDIS_URL"], WORKER_SERVICES="noop,stamp",
                     WORKER_ID="bench-c")
    log = logdir / f"worker-{int(time.time() * 1000)}.log"
    client.set(tasks.DONE_KEY, 0)
    with running_worker("emp_app", ",".join(names), env, CONCURRENCY, log) as proc:
        for name in names:
            submit("noop", {}, pool=name, app=tasks.emp_app)
        wait_counter(client, tasks.DONE_KEY, len(names), 120, proc)
        client.set(tasks.DONE_KEY, 0)
        idle = idle_dispatch(client, names, tasks, idle_jobs)
        # What the shards burn with nothing to do (cluster bus, replication pings,
        # the idle worker's turns on the wake-up lists), so it can be taken off.
        idle0 = {port: _cpu(node) for port, node in masters.items()}
        time.sleep(IDLE_SECONDS)
        idle_rate = {port: (_cpu(node) - idle0[port]) / IDLE_SECONDS
                     for port, node in masters.items()}
        for node in masters.values():
            node.config_resetstat()
        cpu0 = {port: _cpu(node) for port, node in masters.items()}
        worker0 = group_cpu_seconds(proc.pid)
        latencies: list[float] = []
        start = time.monotonic()
        for i in range(n):
            t0 = time.perf_counter()
            submit("noop", {}, pool=names[i % len(names)], app=tasks.emp_app)
            latencies.append((time.perf_counter() - t0) * 1000)
        submitted = time.monotonic()
        done = wait_counter(client, tasks.DONE_KEY, n, 600, proc)
        cpu1 = {port: _cpu(node) for port, node in masters.items()}
        worker_cpu = group_cpu_seconds(proc.pid) - worker0
        stats = {port: node.info("commandstats") for port, node in masters.items()}
    per_shard = {}
    for port, name in pools.items():
        jobs = len(range(names.index(name), n, len(names)))
        calls = {k.removeprefix("cmdstat_"): round(v["calls"] / jobs, 2)
                 for k, v in stats[port].items() if v["calls"] / jobs >= 0.05}
        used = cpu1[port] - cpu0[port]
        per_shard[name] = {
            "port": port, "jobs": jobs,
            "redis_cpu_us_per_job": round(used * 1e6 / jobs, 1),
            "idle_cpu_ms_per_s": round(idle_rate[port] * 1000, 2),
            "net_of_idle_us_per_job": round(
                (used - idle_rate[port] * (done - start)) * 1e6 / jobs, 1),
            "calls_per_job": dict(sorted(calls.items(), key=lambda kv: -kv[1])[:8]),
        }
    return {
        "wait_replicas": int(os.environ.get("EMP_ENQUEUE_REPLICAS") or 0),
        "jobs": n,
        "submit_s": round(submitted - start, 3),
        "jobs_per_s": round(n / (done - start), 1),
        "submit_ms": summary(latencies),
        "idle_dispatch_ms": idle,
        "worker_cpu_ms_per_job": round(worker_cpu * 1000 / n, 3),
        "redis_cpu_us_per_job_total": round(
            sum(cpu1[p] - cpu0[p] for p in pools) * 1e6 / n, 1),
        "net_of_idle_us_per_job_total": round(
            sum(cpu1[p] - cpu0[p] - idle_rate[p] * (done - start) for p in pools) * 1e6 / n, 1),
        "shards": per_shard,
    }


def _cpu(node: Any) -> float:
    info = node.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def wait_counter(client: Any, key: str, target: int, timeout: float, proc: Any) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = int(client.get(key) or 0)
        if value >= target:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} is {value} after {timeout:.0f}s, expected {target}")
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        time.sleep(POLL_S)


def run_child(replicas: int, n: int, pools: dict[int, str], env: dict[str, str]) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON line."""
    child_env = {**env, "EMP_ENQUEUE_REPLICAS": str(replicas)}
    out = subprocess.run(
        [sys.executable, __file__, "--child",
         json.dumps({"n": n, "pools": pools, "idle_jobs": 30 if n <= 1000 else 90})],
        env=child_env, capture_output=True, text=True, timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"run failed: {out.stdout[-2000:]}{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        pools = {int(k): v for k, v in spec["pools"].items()}
        with tempfile.TemporaryDirectory(prefix="emp-bench-logs-") as logdir:
            print(json.dumps(child(spec["n"], pools, Path(logdir), spec["idle_jobs"])),
                  flush=True)
        return
    args = quick_args(__doc__)
    n = 1000 if args.quick else 5000
    order = [0, 1] if args.quick else [0, 1, 0, 1]

    from capability_router.cluster import cluster_client
    from emp_tasks.local_cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="emp-bench-cluster-") as workdir:
        cluster = LocalCluster(Path(workdir)).start()
        try:
            env = {**os.environ, **cluster.env, "BENCH_REDIS_URL": cluster.url}
            os.environ.update(cluster.env)
            pools = pools_per_master(cluster, cluster_client(cluster.url))
            print(f"cluster masters {sorted(pools)}; pools {pools}", flush=True)
            runs: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
            for replicas in order:
                result = run_child(replicas, n, pools, env)
                runs[replicas].append(result)
                shards = ", ".join(f"{name} {s['redis_cpu_us_per_job']:.0f} (net of idle "
                                   f"{s['net_of_idle_us_per_job']:.0f}, idle "
                                   f"{s['idle_cpu_ms_per_s']:.1f} ms/s)"
                                   for name, s in result["shards"].items())
                print(f"WAIT {replicas}: {n} jobs -> {result['jobs_per_s']:.0f} jobs/s; submit "
                      f"p50 {result['submit_ms']['p50']:.2f} ms p99 "
                      f"{result['submit_ms']['p99']:.2f} ms; Redis CPU us/job per shard: "
                      f"{shards} (all shards {result['redis_cpu_us_per_job_total']:.0f}); "
                      f"idle worker of {len(pools)} pools: submit -> start p50 "
                      f"{result['idle_dispatch_ms']['p50']:.1f} ms, max "
                      f"{result['idle_dispatch_ms']['max']:.1f} ms", flush=True)
        finally:
            cluster.stop()
    best = {r: max(x["jobs_per_s"] for x in rs) for r, rs in runs.items()}
    p50 = {r: min(x["submit_ms"]["p50"] for x in rs) for r, rs in runs.items()}
    cpu = {r: min(x["redis_cpu_us_per_job_total"] for x in rs) for r, rs in runs.items()}
    net = {r: min(x["net_of_idle_us_per_job_total"] for x in rs) for r, rs in runs.items()}
    print(f"WAIT costs {p50[1] - p50[0]:.2f} ms per submit (p50) and "
          f"{cpu[1] - cpu[0]:.0f} us of Redis CPU per job ({net[1] - net[0]:.0f} net of idle); "
          f"jobs/s {best[0]:.0f} -> {best[1]:.0f}",
          flush=True)
    emit_json({
        "bench": "cluster_throughput", "quick": args.quick, "jobs_per_run": n,
        "masters": len(pools),
        "jobs_per_s": {"no_wait": best[0], "wait": best[1]},
        "submit_p50_ms": {"no_wait": p50[0], "wait": p50[1]},
        "redis_cpu_us_per_job": {"no_wait": cpu[0], "wait": cpu[1]},
        "redis_cpu_us_per_job_net_of_idle": {"no_wait": net[0], "wait": net[1]},
        "idle_dispatch_ms": runs[0][0]["idle_dispatch_ms"],
        "runs": {"no_wait": runs[0], "wait": runs[1]},
    })


if __name__ == "__main__":
    main()
