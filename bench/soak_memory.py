"""Memory against jobs processed: do the long-running processes keep per-job state?

One private Redis, one ``emp worker`` (prefork, 2 children, serving echo) and
one ``emp api``. Step 1: echo jobs submitted straight to the queue in
batches, each with its own customer_id and workflow_id (production's shape),
the worker's parent and children sampled (RSS) after each batch. Step 2: one
client WebSocket kept open submits job after job (each with its own
customer, workflow and message_id) and waits for their completion, as a
studio's client that stays connected for weeks; the API's processes are
sampled after each batch. Quick: 3,000 worker jobs and 1,500 socket jobs;
full: 30,000 and 8,000. Reported: RSS MB per sample and each process's
growth from the first sample (after warm-up) to the last. Target: every
process grows less than 5% over the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    ROOT,
    emit_json,
    quick_args,
    start_redis,
    stop_worker,
    verdict,
    worker_env,
)
from emp_tasks.app import create_app  # noqa: E402
from emp_tasks.local_redis import free_port  # noqa: E402
from emp_tasks.producer import get_job, submit  # noqa: E402
from emp_tasks.websocket_client import WebSocketClient  # noqa: E402

#: Growth over the run (first sample -> last) every process must stay under.
TARGET_GROWTH = 0.05


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return sorted(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []


def sample(roles: dict[str, int]) -> dict[str, float]:
    return {role: rss_mb(pid) for role, pid in roles.items()}


def growth(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Each process's growth from the first sample to the last, as a fraction."""
    first, last = samples[0]["mb"], samples[-1]["mb"]
    return {role: round((last[role] - first[role]) / first[role], 4)
            for role in first if first[role] > 0}


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "emp_tasks.cli", *args], env=env,
                                cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def job_fields() -> dict[str, str]:
    return {"customer_id": f"c-{uuid.uuid4().hex[:12]}", "workflow_id": f"wf-{uuid.uuid4().hex}"}


def worker_step(url: str, total: int, batch: int, log: Path) -> list[dict[str, Any]]:
    """Echo jobs in batches through one prefork worker; its processes' RSS per batch."""
    app = create_app(url)
    worker = spawn(["worker", "-l", "warning", "-c", "2"],
                   worker_env(url, WORKER_ID="bench-soak", WORKER_SERVICES="echo"), log)
    samples: list[dict[str, Any]] = []
    try:
        done = 0
        while done < total:
            ids = [submit("echo", {"i": done + i}, app=app, **job_fields()).id
                   for i in range(batch)]
            deadline = time.monotonic() + 300
            while get_job(ids[-1], app=app)["status"] != "completed":
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit(f"jobs did not complete: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            done += batch
            time.sleep(0.5)  # the last batch's acks and heartbeats settle
            roles = {"parent": worker.pid}
            roles.update({f"child{n}": pid for n, pid in enumerate(children(worker.pid))})
            samples.append({"jobs": done, "mb": sample(roles)})
            print("worker", json.dumps(samples[-1]), flush=True)
    finally:
        stop_worker(worker)
        app.close()
    return samples


def start_api(url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = spawn(["api", "--port", str(port)], worker_env(url), log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"emp api exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(base + "/health", timeout=5).status_code == 200:
                return proc, base
        except requests.RequestException:  # not listening yet, or slow on a busy machine
            pass
        time.sleep(0.2)
    stop_worker(proc)
    raise SystemExit(f"emp api did not start: {log.read_text()[-2000:]}")


def socket_step(url: str, total: int, batch: int, logs: Path) -> list[dict[str, Any]]:
    """One client socket submitting job after job; the API's processes' RSS per batch."""
    worker = spawn(["worker", "-l", "warning", "-c", "2"],
                   worker_env(url, WORKER_ID="bench-soak-api", WORKER_SERVICES="echo"),
                   logs / "worker-api.log")
    api = None
    samples: list[dict[str, Any]] = []
    try:
        api, base = start_api(url, logs / "api.log")
        ws = WebSocketClient.connect(base.replace("http", "ws") + "/ws/client/bench-soak")
        ws.receive(timeout=30)  # connection_established
        done = 0
        while done < total:
            pending = set()
            for _ in range(batch):
                message_id = f"m-{uuid.uuid4().hex}"
                ws.send(json.dumps({"type": "submit_job", "message_id": message_id,
                                    "service_required": "echo", "payload": {"n": done},
                                    **job_fields()}))
                pending.add(message_id)
            deadline = time.monotonic() + 300
            while pending:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{len(pending)} socket jobs did not complete")
                text = ws.receive(timeout=30)
                message = json.loads(text) if text else {}
                if message.get("type") == "complete_job":
                    pending.discard(message.get("job_id"))
                elif message.get("type") == "error":
                    raise SystemExit(f"socket error: {message}")
            done += batch
            time.sleep(0.5)
            roles = {"master": api.pid}
            roles.update({f"worker{n}": pid for n, pid in enumerate(children(api.pid))})
            samples.append({"jobs": done, "mb": sample(roles)})
            print("api", json.dumps(samples[-1]), flush=True)
        ws.close()
    finally:
        if api is not None:
            stop_worker(api)
        stop_worker(worker)
    return samples


def main() -> None:
    args = quick_args(__doc__)
    worker_jobs, socket_jobs = (3000, 1500) if args.quick else (30000, 8000)
    worker_batch, socket_batch = (500, 250) if args.quick else (3000, 1000)
    url, stop = start_redis()
    logs = Path(tempfile.mkdtemp(prefix="emp-bench-soak-"))
    result: dict[str, Any] = {"bench": "soak_memory", "quick": args.quick}
    try:
        workers = worker_step(url, worker_jobs, worker_batch, logs / "worker.log")
        sockets = socket_step(url, socket_jobs, socket_batch, logs)
    finally:
        stop()
    # The first batch is warm-up (imports, pools, connections): growth counts from the second.
    result["worker"] = {"jobs": worker_jobs, "samples": workers,
                        "growth": growth(workers[1:])}
    result["api_socket"] = {"jobs": socket_jobs, "samples": sockets,
                            "growth": growth(sockets[1:])}
    worst = max([*result["worker"]["growth"].values(), *result["api_socket"]["growth"].values()])
    result["worst_growth"] = worst
    result["verdict"] = verdict(worst < TARGET_GROWTH)
    print(f"worst growth {worst:.1%} (target < {TARGET_GROWTH:.0%})", flush=True)
    emit_json(result)


if __name__ == "__main__":
    main()
