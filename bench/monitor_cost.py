"""What the monitor costs: its queue view as the backlog grows, and its live-update latency.

Part 1, queue view. One private Redis, 1,000 requirement classes (the
claim_cost set) and 20 live worker records; pending jobs filed with
pipelined ``emp_enqueue`` to 1k, 10k and 100k (quick: 1k and 10k). At each
level: the time of ``webapp.monitor.queue.queue_summary`` (everything the
Queue page and the Prometheus collector read: the pending count, oldest age
and live servers of every class) seen by the client, and the server time of
``emp_queue_summary`` from SLOWLOG (summed over its calls of 100 classes,
and the longest single call: how long Redis is held at a time). Baseline in the same run on the same
data: the naive read an operator script would do, every class's pending
zset with scores (``ZRANGE 0 -1 WITHSCORES``), oldest taken in Python.

Part 2, live updates. One ``emp worker`` runs simulation jobs reporting
progress every 20 ms; three readers see the same events: the monitor's
Server-Sent Events stream (``/emp/events``, what its pages use), the API's
``/ws/monitor`` WebSocket, and a bare XREAD on the pool's stream (the
floor). Latency is arrival minus the event's ``timestamp`` (Redis TIME in
the progress function, same clock). Quick: 2 jobs of 100 steps; full: 4 of 250.

Part 3, Machines page bytes. 300 machine records of 8 GPUs and 8 registered
workers each (2,400 workers, one capability profile), one ``emp monitor``.
Bytes on the wire of one Machines page refresh: the read the page made
before (``/emp/api/machines``, the whole view, uncompressed), its read now
(``?view=page``, gzip: the fields it shows, each profile once), the same
read again with the first answer's ETag while nothing changed (304), and
after one machine's report changed. Body bytes, then header bytes.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, quick_args, start_redis, stop_worker, summary  # noqa: E402
from bench._common import worker_env as bench_worker_env  # noqa: E402
from bench.claim_cost import Filler, make_classes, make_profiles  # noqa: E402
from bench.progress_latency import start, stream_reader, wait_http  # noqa: E402
from capability_router.functions import QueueFunctions, ensure_library  # noqa: E402
from capability_router.keys import Keys  # noqa: E402
from capability_router.registry import WorkerRegistry  # noqa: E402
from emp_tasks.local_redis import free_port  # noqa: E402
from emp_tasks.websocket_client import WebSocketClient as Client  # noqa: E402
from machine.status import now_ms, publish  # noqa: E402
from webapp.monitor.queue import queue_summary  # noqa: E402

NAMESPACE = "bench"


def naive_summary(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Baseline: every pending job's score read back, oldest found in Python."""
    keys = Keys(NAMESPACE)
    classes = client.zrange(keys.heads, 0, -1)
    with client.pipeline(transaction=False) as pipe:
        for csig in classes:
            pipe.zrange(keys.pending(csig), 0, -1, withscores=True)
        rows = pipe.execute()
    return {csig: (len(row), int(min(score % 1e13 for _, score in row)))
            for csig, row in zip(classes, rows, strict=True) if row}


def timed(fn, runs: int) -> list[float]:  # noqa: ANN001 - any callable
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def queue_view_cost(levels: list[int], runs: int) -> list[dict[str, float]]:
    url, stop_redis = start_redis()
    client = redis.Redis.from_url(url)
    text = redis.Redis.from_url(url, decode_responses=True)
    try:
        ensure_library(client)
        rng = random.Random(7)
        specs = make_classes()
        registry = WorkerRegistry(text)
        for profile in make_profiles(rng)[:20]:  # live workers the view matches classes against
            QueueFunctions(client, NAMESPACE).register_worker(profile)
            registry.heartbeat(profile.as_dict(), [NAMESPACE], [], ttl_ms=3_600_000)
        text.sadd("emp:namespaces", NAMESPACE)
        filler = Filler(client, specs, rng)
        results, filled = [], 0
        for level in levels:
            filler.fill(level - filled)
            filled = level
            client.config_set("slowlog-log-slower-than", 0)
            client.config_set("slowlog-max-len", 1_000_000)  # inner commands are logged too
            client.slowlog_reset()
            view_ms = timed(lambda: queue_summary(text), runs)
            calls = [e["duration"] for e in client.slowlog_get(1_000_000)
                     if b"emp_queue_summary" in b" ".join(e["command"].split()[:2])]
            per_view = len(calls) / runs
            server_us = sum(calls) / runs
            client.config_set("slowlog-log-slower-than", 10_000)
            naive_ms = timed(lambda: naive_summary(text), runs)
            summary_now = queue_summary(text)
            naive = naive_summary(text)
            assert {c["class"]: (c["pending"], c["oldest_ms"]) for c in summary_now["classes"]
                    if c["pool"] == NAMESPACE} == naive, "the two reads disagree"
            row = {"pending": level, "classes": len(naive),
                   "view_p50_ms": median(view_ms), "server_us_per_view": server_us,
                   "longest_call_us": max(calls), "calls_per_view": per_view,
                   "naive_p50_ms": median(naive_ms),
                   "naive_over_view": median(naive_ms) / median(view_ms)}
            print(f"{level:>7} pending in {len(naive)} classes: queue view p50 "
                  f"{row['view_p50_ms']:.1f} ms (emp_queue_summary {server_us:.0f} µs in Redis "
                  f"over {per_view:.1f} calls, longest {max(calls)} µs); naive read p50 "
                  f"{row['naive_p50_ms']:.1f} ms "
                  f"(x{row['naive_over_view']:.1f})")
            results.append(row)
        return results
    finally:
        stop_redis()


def sse_reader(base: str, stop: threading.Event, out: list[float], ready: threading.Event
               ) -> None:
    with requests.get(base + "/emp/events", stream=True, timeout=60) as reply:
        ready.set()
        try:
            for line in reply.iter_lines(decode_unicode=True):
                if stop.is_set():
                    return
                if line and line.startswith("data: "):
                    message = json.loads(line[6:])
                    if message.get("type") == "update_job_progress":
                        out.append(time.time() * 1000 - message["timestamp"])
        except requests.RequestException:  # the monitor stopped at the end of the run
            return


def ws_reader(base: str, stop: threading.Event, out: list[float], ready: threading.Event
              ) -> None:
    ws = Client.connect(base.replace("http", "ws", 1) + "/ws/monitor/bench")
    ready.set()
    try:
        while not stop.is_set():
            text = ws.receive(timeout=0.5)
            if text:
                message = json.loads(text)
                if message.get("type") == "update_job_progress":
                    out.append(time.time() * 1000 - message["timestamp"])
    finally:
        ws.close()


def live_latency(jobs: int, steps: int) -> dict[str, dict[str, float]]:
    url, stop_redis = start_redis()
    logs = Path(tempfile.mkdtemp(prefix="emp-bench-monitor-"))
    env = bench_worker_env(url, WORKER_ID="bench-monitor", WORKER_SERVICES="simulation")
    worker = start(["worker", "-l", "warning"], env, logs / "worker.log")
    api_port, monitor_port = free_port(), free_port()
    api = start(["api", "--port", str(api_port)], env, logs / "api.log")
    monitor = start(["monitor", "--port", str(monitor_port)], env, logs / "monitor.log")
    samples: dict[str, list[float]] = {"sse": [], "ws": [], "xread": []}
    stop = threading.Event()
    try:
        api_base, monitor_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{monitor_port}"
        wait_http(api_base + "/health")
        wait_http(monitor_base + "/health")
        readers = []
        for target, args in ((sse_reader, (monitor_base, stop, samples["sse"])),
                             (ws_reader, (api_base, stop, samples["ws"]))):
            ready = threading.Event()
            readers.append(threading.Thread(target=target, args=(*args, ready), daemon=True))
            readers[-1].start()
            ready.wait(10)
        readers.append(threading.Thread(target=stream_reader, args=(url, stop, samples["xread"]),
                                        daemon=True))
        readers[-1].start()
        time.sleep(1.0)
        for _ in range(jobs):
            reply = requests.post(api_base + "/api/jobs", timeout=10, json={
                "service_required": "simulation",
                "payload": {"steps": steps, "duration": steps * 0.02}})
            job_id = reply.json()["job_id"]
            client = redis.Redis.from_url(url, decode_responses=True)
            deadline = time.monotonic() + steps * 0.02 + 60
            while client.hget(Keys().job(job_id), "status") != "completed":
                if time.monotonic() > deadline:
                    raise TimeoutError(job_id)
                time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        for proc in (monitor, api, worker):
            stop_worker(proc, grace=5)
        stop_redis()
    stats = {name: summary(values) for name, values in samples.items()}
    for name, label in (("sse", "monitor SSE"), ("ws", "API /ws/monitor"), ("xread", "XREAD")):
        s = stats[name]
        print(f"{label:<16} {len(samples[name]):>5} events  p50 {s['p50']:.1f} ms  "
              f"p99 {s['p99']:.1f} ms  max {s['max']:.1f} ms")
    print(f"SSE / WebSocket p50 ratio: {stats['sse']['p50'] / stats['ws']['p50']:.2f}; "
          f"SSE / XREAD: {stats['sse']['p50'] / stats['xread']['p50']:.2f}")
    return stats


def publish_fleet(client: redis.Redis, machines: int, workers: int) -> list[dict]:
    """``machines`` live records of ``workers`` GPUs and registered workers each."""
    registry = WorkerRegistry(client)
    records = []
    for m in range(machines):
        machine = f"box-{m:03d}"
        programs = [{"name": f"simulation-{n}", "role": "worker", "kind": "simulation",
                     "worker_id": f"{machine}-simulation-{n}", "gpu": n, "port": None,
                     "state": "RUNNING", "pid": 1000 + n, "started": int(time.time() - 30)}
                    for n in range(workers)]
        record = {
            "machine_id": machine, "status": "online", "hostname": "host-" + machine,
            "health_url": f"http://{machine}:9090", "started_at": now_ms(),
            "last_report": now_ms(), "uptime_seconds": 60.0, "gpu_source": "mock",
            "gpus": [{"index": n, "name": "Mock GPU", "memory_gb": 24} for n in range(workers)],
            "workers": programs, "services": [], "log_dropped": 0}
        publish(client, record, emit=False)
        records.append(record)
        for program in programs:
            registry.heartbeat({
                "worker_id": program["worker_id"], "machine_id": machine,
                "services": ["simulation"], "hardware": {"gpu_memory_gb": 24},
                "models": {}, "customer_access": {}, "workflow_id": None},
                ["default"], [], 3_600_000, first=True)
    return records


def wire(url: str, **headers: str) -> tuple[int, int, int, str | None]:
    """(status, body bytes as sent, header bytes, ETag) of one GET."""
    with requests.get(url, headers=headers, stream=True, timeout=60) as reply:
        body = reply.raw.read(decode_content=False)
        head = len(f"HTTP/1.1 {reply.status_code} {reply.reason}\r\n") + sum(
            len(k) + len(v) + 4 for k, v in reply.headers.items()) + 2
        return reply.status_code, len(body), head, reply.headers.get("ETag")


def machines_page_bytes(machines: int = 300, workers: int = 8) -> dict[str, dict[str, int]]:
    url, stop_redis = start_redis()
    logs = Path(tempfile.mkdtemp(prefix="emp-bench-machines-"))
    monitor = None
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        records = publish_fleet(client, machines, workers)
        port = free_port()
        monitor = start(["monitor", "--port", str(port)], bench_worker_env(url),
                        logs / "monitor.log")
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health")
        page = base + "/emp/api/machines?view=page"
        rows: dict[str, dict[str, int]] = {}
        for name, target, headers in (("before (whole view)", base + "/emp/api/machines",
                                       {"Accept-Encoding": "identity"}),
                                      ("now (page view, gzip)", page,
                                       {"Accept-Encoding": "gzip, deflate"})):
            status, body, head, etag = wire(target, **headers)
            rows[name] = {"status": status, "body": body, "headers": head}
        status, body, head, _ = wire(page, **{"Accept-Encoding": "gzip, deflate",
                                              "If-None-Match": etag or ""})
        rows["now, fleet unchanged (304)"] = {"status": status, "body": body, "headers": head}
        publish(client, {**records[0], "last_report": now_ms()}, emit=False)
        status, body, head, _ = wire(page, **{"Accept-Encoding": "gzip, deflate",
                                              "If-None-Match": etag or ""})
        rows["now, one machine reported"] = {"status": status, "body": body, "headers": head}
        for name, row in rows.items():
            print(f"Machines page at {machines} machines x {workers} workers, {name:<28} "
                  f"{row['status']}  {row['body']:>9,} B body + {row['headers']} B headers")
        return rows
    finally:
        if monitor is not None:
            stop_worker(monitor, grace=5)
        stop_redis()


def main() -> None:
    args = quick_args(__doc__)
    levels = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    cost = queue_view_cost(levels, runs=10 if args.quick else 30)
    live = live_latency(*((2, 100) if args.quick else (4, 250)))
    machines_page = machines_page_bytes()
    emit_json({"bench": "monitor_cost", "queue_view": cost, "live_ms": live,
               "machines_page_bytes": machines_page,
               "quick": args.quick, "pid": os.getpid()})


if __name__ == "__main__":
    main()
