"""Webhook delivery: throughput to a local receiver, latency, and recovery after a restart.

One private Redis, ``emp webhooks`` under gunicorn (loopback allowed), and a
keep-alive HTTP receiver in this process. Events are synthetic
``job_submitted`` entries appended to the default pool's stream in one
pipeline, so the numbers are the webhook service's alone.

- one hook: deliveries are sequential (one in flight per hook, for order),
  so this is the per-hook ceiling;
- paced: 50 events 20 ms apart, latency from append to receipt;
- nine hooks on the same events: hooks are served in parallel by the
  dispatcher threads;
- restart: the service is SIGKILLed while a hook waits in backoff (receiver
  answering 503), the receiver recovers, the service starts again under
  the same instance name; reported: process start to /health, and /health
  to the first delivery; then SIGKILLed mid-request (receiver stalling) and
  restarted, where the previous run's lease is released at start.

Quick: 300 events; full: 2000. Latency is receipt time minus the event's
append time (Redis TIME, same machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, quick_args, start_redis, summary, worker_env  # noqa: E402
from capability_router.keys import Keys  # noqa: E402
from emp_tasks.local_redis import free_port  # noqa: E402


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a killed service resets its connections; nothing to report


class Sink:
    """Counts requests per path; ``status`` and ``stall`` steer the answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.stall = 0.0
        self.lock = threading.Lock()
        self.arrivals: dict[str, list[tuple[float, dict]]] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if sink.stall:
                    time.sleep(sink.stall)
                status = sink.status
                if status == 200:
                    with sink.lock:
                        sink.arrivals.setdefault(self.path, []).append(
                            (time.time() * 1000, json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def count(self, path: str | None = None) -> int:
        with self.lock:
            if path:
                return len(self.arrivals.get(path, []))
            return sum(len(v) for v in self.arrivals.values())


def start_service(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "emp_tasks.cli", "webhooks", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_health(base: str, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if requests.get(base + "/health", timeout=1).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise TimeoutError(base)


def wait_until(predicate, timeout: float) -> float:  # noqa: ANN001
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.002)
    return time.monotonic() - started


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def append_events(client: redis.Redis, count: int, tag: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        for n in range(count):
            data = {"job_id": f"{tag}-{n}", "job_type": "echo", "priority": 50}
            pipe.xadd(Keys().events, {"event": "job_submitted", "job_id": f"{tag}-{n}",
                                      "data": json.dumps(data)})
        pipe.execute()


def latencies(sink: Sink, path: str) -> list[float]:
    with sink.lock:
        return [at - int(body["event_id"].rpartition(":")[2].partition("-")[0])
                for at, body in sink.arrivals.get(path, [])]


def main() -> None:
    args = quick_args(__doc__)
    events = 300 if args.quick else 2000
    url, stop_redis = start_redis()
    client = redis.Redis.from_url(url, decode_responses=True)
    logs = Path(tempfile.mkdtemp(prefix="emp-bench-webhooks-"))
    env = worker_env(url, EMP_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
                     EMP_WEBHOOK_INSTANCE="bench", EMP_WEBHOOK_TIMEOUT_SECONDS="5",
                     EMP_WEBHOOK_INITIAL_DELAY_MS="2000", EMP_WEBHOOK_MAX_DELAY_MS="2000")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sink = Sink()
    service = start_service(env, port, logs / "webhooks.log")
    result: dict = {"bench": "webhook_delivery", "events": events, "quick": args.quick}
    try:
        wait_health(base)

        def hook(path: str) -> str:
            reply = requests.post(base + "/webhooks", json={
                "url": f"http://127.0.0.1:{sink.port}{path}", "events": ["job_submitted"]},
                timeout=10)
            return reply.json()["data"]["id"]

        hook("/one")
        started = time.monotonic()
        append_events(client, events, "one")
        seconds = wait_until(lambda: sink.count("/one") >= events, 300)
        result["one_hook_per_s"] = round(events / seconds, 1)
        result["one_hook_latency_ms"] = summary(latencies(sink, "/one"))
        print(f"1 hook: {events} deliveries in {seconds:.2f}s = {events / seconds:.0f}/s")

        hook("/paced")
        for n in range(50):
            append_events(client, 1, f"paced{n}")
            time.sleep(0.02)
        wait_until(lambda: sink.count("/paced") >= 50, 60)
        paced = summary(latencies(sink, "/paced"))
        result["paced_latency_ms"] = paced
        print(f"paced (50/s): event -> receiver p50 {paced['p50']:.1f} ms, "
              f"p99 {paced['p99']:.1f} ms")

        paths = [f"/many{n}" for n in range(7)]
        for path in paths:
            hook(path)
        before = sink.count()
        started = time.monotonic()
        append_events(client, events, "many")
        total = events * (len(paths) + 2)  # "/one" and "/paced" get them too
        seconds = wait_until(lambda: sink.count() - before >= total, 600)
        result["nine_hooks_per_s"] = round(total / seconds, 1)
        print(f"9 hooks: {total} deliveries in {seconds:.2f}s = {total / seconds:.0f}/s")
        del started

        # Restart during backoff.
        for hook_id in client.zrange("emp:webhooks:{wh}:hooks", 0, -1):
            requests.delete(f"{base}/webhooks/{hook_id}", timeout=10)
        hook("/restart")
        sink.status = 503
        append_events(client, 5, "restart")
        wait_until(lambda: client.hget("emp:webhooks:{wh}:state:" + client.zrange(
            "emp:webhooks:{wh}:hooks", 0, 0)[0], "consecutive_failures") == "1", 30)
        kill(service)
        sink.status = 200
        time.sleep(2.5)  # the backoff (2 s) has passed while the service was down
        spawned = time.monotonic()
        service = start_service(env, port, logs / "webhooks.log")
        to_health = wait_health(base)
        to_first = wait_until(lambda: sink.count("/restart") >= 1, 30)
        wait_until(lambda: sink.count("/restart") >= 5, 30)
        result["restart_to_health_s"] = round(to_health, 3)
        result["health_to_first_delivery_s"] = round(to_first, 3)
        print(f"restart after backoff: process start -> /health {to_health:.2f}s, "
              f"/health -> first delivery {to_first:.3f}s")
        del spawned

        # Restart during an in-flight request.
        sink.stall = 10.0
        append_events(client, 1, "inflight")
        time.sleep(0.5)
        kill(service)
        sink.stall = 0.0
        service = start_service(env, port, logs / "webhooks.log")
        to_health = wait_health(base)
        to_first = wait_until(lambda: sink.count("/restart") >= 6, 60)
        result["inflight_health_to_redelivery_s"] = round(to_first, 3)
        print(f"restart mid-request: /health -> redelivery {to_first:.3f}s "
              f"(lease {5 + 10}s not waited for: same instance name)")
    finally:
        if service.poll() is None:
            kill(service)
        sink.server.shutdown()
        stop_redis()
    emit_json(result)


if __name__ == "__main__":
    main()
