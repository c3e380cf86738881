"""Submit latency over REST: POST /api/jobs at a fixed rate, against direct producer.submit.

One private Redis and one ``emp api`` server (gunicorn, the real command).
Load is open-loop: request i is due at start + i / rate whatever the earlier
ones did, and is sent by a pool of threads with keep-alive connections; its
latency counts from when it was due, so a stalled server cannot hide its
backlog (no coordinated omission). The baseline, in the same run, calls
``emp_tasks.producer.submit`` in this process at the same rate with the same
thread pool. The first second of each side is warm-up and left out (every
thread's first calls open connections). Rate 200/s; quick: 5 s per side,
full: 30 s. ``--worker`` also runs one ``emp worker`` draining the jobs as
they arrive. Reported: p50/p99/mean/max ms of each side, the call alone,
the REST/direct ratio, refused requests and the server's CPU time per
request (steadier than latency on a shared machine). Target: REST p99
<= 20 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    ROOT,
    emit_json,
    group_cpu_seconds,
    paced,
    start_redis,
    stop_worker,
    summary,
    verdict,
    worker_env,
)
from emp_tasks.local_redis import free_port  # noqa: E402

RATE = 200.0
#: Seconds of load at the start of each side left out: first uses of each thread's
#: connections (client and server side) are not the steady state being measured.
WARMUP_SECONDS = 1.0
THREADS = 16
P99_TARGET_MS = 20.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (under 60 s)")
    parser.add_argument("--worker", action="store_true", help="also run a worker draining jobs")
    return parser.parse_args()


def open_loop(send: Callable[[int], str | None], seconds: float) -> dict[str, Any]:
    """Call ``send(i)`` at RATE per second for ``seconds``; latencies from each due time.

    ``send`` returns None when the job was accepted, else what went wrong.
    """
    total = int(seconds * RATE)
    latencies: list[float] = []
    service: list[float] = []
    refused: dict[str, int] = {}
    lock = threading.Lock()

    def run(i: int, due: float) -> None:
        started = time.perf_counter()
        try:
            problem = send(i)
        except Exception as exc:  # a refused connection counts, it does not stop the run
            problem = type(exc).__name__
        done = time.perf_counter()
        with lock:
            if problem:
                refused[problem] = refused.get(problem, 0) + 1
            elif i >= WARMUP_SECONDS * RATE:
                latencies.append((done - due) * 1000.0)
                service.append((done - started) * 1000.0)

    with ThreadPoolExecutor(THREADS) as pool:
        for i, due in paced(total, RATE):
            pool.submit(run, i, due)
    return {"latency_ms": summary(latencies), "service_ms": summary(service),
            "refused": refused, "sent": total}


def start_api(url: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``emp api`` on a free port, in its own process group; waits for /health."""
    port = free_port()
    env = worker_env(url)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emp_tasks.cli", "api", "--port", str(port)],
            env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emp api exited: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or still loading (slow on a busy machine)
        time.sleep(0.1)
    raise TimeoutError(f"emp api did not start: {log_path.read_text()[-2000:]}")


def start_emp_worker(url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = worker_env(url, WORKER_ID="bench-api-1", WORKER_SERVICES="echo")
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "emp_tasks.cli", "worker", "-l", "warning", "-c", "1"],
            env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def rest_sender(base: str) -> Callable[[int], str | None]:
    """POST /api/jobs over one keep-alive connection per thread (http.client: the load
    generator shares the cores with the server, so it should cost little CPU)."""
    local = threading.local()
    host, port = base.removeprefix("http://").split(":")

    def send(i: int) -> str | None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        body = json.dumps({"service_required": "echo", "payload": {"n": i}})
        try:
            connection.request("POST", "/api/jobs", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            local.connection = None
            connection.close()
            raise
        return None if response.status == 201 else f"HTTP {response.status}"

    return send


def direct_sender(url: str) -> Callable[[int], str | None]:
    from emp_tasks.app import create_app
    from emp_tasks.producer import submit

    app = create_app(url)

    def send(i: int) -> None:
        submit("echo", {"n": i}, app=app)

    return send


def report(name: str, result: dict[str, Any]) -> None:
    lat, svc = result["latency_ms"], result["service_ms"]
    print(f"{name:>6}: submit latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
          f"mean {lat['mean']:.2f} ms, max {lat['max']:.2f} ms (n={lat['n']}); "
          f"call alone p50 {svc['p50']:.2f} ms, p99 {svc['p99']:.2f} ms; "
          f"refused {sum(result['refused'].values())}/{result['sent']} {result['refused'] or ''}",
          flush=True)
    if "server_cpu_ms_per_request" in result:
        print(f"        server CPU {result['server_cpu_ms_per_request']:.2f} ms per request",
              flush=True)


def main() -> None:
    args = parse_args()
    seconds = 5.0 if args.quick else 30.0
    url, stop_redis = start_redis()
    os.environ["EMP_REDIS_URL"] = url
    started = time.monotonic()
    results: dict[str, Any] = {}
    worker = None
    try:
        with tempfile.TemporaryDirectory(prefix="emp-bench-logs-") as logdir:
            try:
                if args.worker:
                    worker = start_emp_worker(url, Path(logdir) / "worker.log")
                # The baseline first, while no API server (and its event reader) runs.
                results["direct"] = open_loop(direct_sender(url), seconds)
                report("direct", results["direct"])
                api, base = start_api(url, Path(logdir) / "api.log")
                try:
                    cpu = group_cpu_seconds(api.pid)
                    results["rest"] = open_loop(rest_sender(base), seconds)
                    cpu = group_cpu_seconds(api.pid) - cpu
                    results["rest"]["server_cpu_ms_per_request"] = round(
                        cpu * 1000 / results["rest"]["sent"], 3)
                    report("REST", results["rest"])
                finally:
                    stop_worker(api, grace=5.0)
            finally:
                if worker is not None:
                    stop_worker(worker, grace=5.0)
    finally:
        stop_redis()
    rest, direct = results["rest"]["latency_ms"], results["direct"]["latency_ms"]
    ratio = {k: round(rest[k] / direct[k], 2) if direct[k] else None for k in ("p50", "p99")}
    met = rest["p99"] <= P99_TARGET_MS and not results["rest"]["refused"]
    print(f"REST p99 {rest['p99']:.2f} ms (target <= {P99_TARGET_MS:.0f}: {verdict(met)}); "
          f"REST/direct p50 x{ratio['p50']}, p99 x{ratio['p99']}", flush=True)
    emit_json({
        "bench": "api_submit_latency",
        "quick": args.quick,
        "worker": args.worker,
        "rate_per_s": RATE,
        "seconds_per_side": seconds,
        "warmup_seconds": WARMUP_SECONDS,
        "threads": THREADS,
        "results": results,
        "rest_p50_ms": rest["p50"],
        "rest_p99_ms": rest["p99"],
        "direct_p50_ms": direct["p50"],
        "direct_p99_ms": direct["p99"],
        "ratio": ratio,
        "targets": {"rest_p99_ms_max": P99_TARGET_MS},
        "met": {"rest_p99": met},
        "total_seconds": round(time.monotonic() - started, 1),
    })


if __name__ == "__main__":
    main()
