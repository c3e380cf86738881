"""Progress latency: from a task's progress call to a WebSocket client of the API.

One private Redis, one ``emp worker`` (simulation jobs), ``emp api`` under
gunicorn. A client submits ``simulation`` jobs over ``/ws/client/...``; each
job reports progress every ``duration/steps`` seconds. For every
``update_job_progress`` message the client notes its arrival time minus the
event's ``timestamp``, which the progress function stamps from Redis TIME
inside the call (same machine clock; 1 ms resolution). Baseline in the same
run, on the same events: a reader in this process blocked on the pool's
event stream with XREAD, the floor any API could reach. Quick: 2 jobs of 150
steps; full: 6 jobs of 250 steps. Target: WebSocket p95 <= 50 ms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    emit_json,
    percentile,
    quick_args,
    start_redis,
    stop_worker,
    summary,
    verdict,
    worker_env,
)
from capability_router.keys import Keys  # noqa: E402
from emp_tasks.local_redis import free_port  # noqa: E402
from emp_tasks.websocket_client import WebSocketClient as Client  # noqa: E402


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "emp_tasks.cli", *command], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise TimeoutError(url)


def stream_reader(url: str, stop: threading.Event, out: list[float]) -> None:
    """Baseline: XREAD BLOCK on the pool's stream, latency of each progress event."""
    client = redis.Redis.from_url(url, decode_responses=True)
    cursor = "$"
    key = Keys().events
    while not stop.is_set():
        reply = client.xread({key: cursor}, block=200, count=100)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id
                if fields["event"] == "update_job_progress":
                    out.append(time.time() * 1000 - json.loads(fields["data"])["timestamp"])


def main() -> None:
    args = quick_args(__doc__)
    jobs, steps = (2, 150) if args.quick else (6, 250)
    duration = steps * 0.02
    url, stop_redis = start_redis()
    logs = Path(tempfile.mkdtemp(prefix="emp-bench-progress-"))
    env = worker_env(url, WORKER_ID="bench-progress", WORKER_SERVICES="simulation")
    worker = start(["worker", "-l", "warning"], env, logs / "worker.log")
    port = free_port()
    api = start(["api", "--port", str(port)], env, logs / "api.log")
    stop = threading.Event()
    baseline: list[float] = []
    reader = threading.Thread(target=stream_reader, args=(url, stop, baseline), daemon=True)
    socket_ms: list[float] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        reader.start()
        ws = Client.connect(f"ws://127.0.0.1:{port}/ws/client/bench")
        ws.receive(timeout=10)
        for n in range(jobs):
            ws.send(json.dumps({"type": "submit_job", "service_required": "simulation",
                                "payload": {"steps": steps, "duration": duration}}))
            while True:
                text = ws.receive(timeout=duration + 30)
                if text is None:
                    raise TimeoutError(f"job {n} sent nothing for {duration + 30:.0f}s")
                arrived = time.time() * 1000
                message = json.loads(text)
                if message["type"] == "update_job_progress":
                    socket_ms.append(arrived - message["timestamp"])
                elif message["type"] == "complete_job":
                    break
        ws.close()
    finally:
        stop.set()
        for proc in (api, worker):
            stop_worker(proc, grace=5)
        stop_redis()
    ws_stats, base_stats = summary(socket_ms), summary(baseline)
    p95 = percentile(socket_ms, 95)
    print(f"progress events: {len(socket_ms)} on the WebSocket, {len(baseline)} on XREAD")
    print(f"WebSocket  p50 {ws_stats['p50']:.1f} ms  p95 {p95:.1f} ms  "
          f"p99 {ws_stats['p99']:.1f} ms  max {ws_stats['max']:.1f} ms")
    print(f"XREAD      p50 {base_stats['p50']:.1f} ms  p95 {percentile(baseline, 95):.1f} ms  "
          f"p99 {base_stats['p99']:.1f} ms")
    ratio = ws_stats["p50"] / base_stats["p50"] if base_stats["p50"] else float("nan")
    print(f"WebSocket / XREAD p50 ratio: {ratio:.2f}")
    print(f"target p95 <= 50 ms: {verdict(p95 <= 50)}")
    emit_json({"bench": "progress_latency", "events": len(socket_ms), "ws_ms": ws_stats,
               "ws_p95_ms": p95, "xread_ms": base_stats,
               "xread_p95_ms": percentile(baseline, 95), "p50_ratio": ratio,
               "quick": args.quick, "pid": os.getpid()})


if __name__ == "__main__":
    main()
