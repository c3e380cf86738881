"""Memory per job: Redis bytes a pending and a retained completed job cost.

One private Redis (the settings of ``emp up``), one ``emp worker`` serving
echo. For a small payload and a 100 KB one, N echo jobs are submitted, then
completed by the worker. Measured with MEMORY USAGE: the job's own keys
(its record and its event stream) and the growth of every key of the pool
(class queues, indexes, the pool's event stream, ...), each divided by N.
Celery's result backend keys (the echo result repeats the payload) are
reported apart. Quick: N = 50; full: N = 500. Target: a 100 KB payload
costs at most 1.25x its size in its record (it is stored once).
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

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    emit_json,
    quick_args,
    start_redis,
    stop_worker,
    verdict,
    worker_env,
)
from capability_router.keys import Keys  # noqa: E402
from emp_tasks.app import create_app  # noqa: E402
from emp_tasks.producer import get_job, submit  # noqa: E402

PAYLOADS = {"small": {"prompt": "a red fox", "steps": 20}, "100kb": {"blob": "x" * 100_000}}
RESULT_KEYS = "celery-task-meta-*"


def usage(client: redis.Redis, pattern: str = "*") -> int:
    """Sum of MEMORY USAGE over the keys matching ``pattern``."""
    return sum(client.memory_usage(key, samples=0) or 0 for key in client.scan_iter(pattern))


def own_keys(client: redis.Redis, ids: list[str]) -> float:
    """Mean MEMORY USAGE of each job's record plus its event stream."""
    keys = Keys("default")
    total = sum((client.memory_usage(keys.job(i), samples=0) or 0)
                + (client.memory_usage(keys.job_events(i), samples=0) or 0) for i in ids)
    return total / len(ids)


def measure(app: Any, client: redis.Redis, url: str, payload: dict[str, Any], n: int,
            log: Path) -> dict[str, float]:
    submit("echo", payload, app=app)  # the class and the pool's keys exist before measuring
    before = usage(client)
    ids = [submit("echo", payload, app=app).id for _ in range(n)]
    pending = {"job_keys": own_keys(client, ids), "all_keys": (usage(client) - before) / n}
    env = worker_env(url, WORKER_ID="bench-memory", WORKER_SERVICES="echo")
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "emp_tasks.cli", "worker", "-l", "warning", "-c", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while any(get_job(i, app=app)["status"] != "completed" for i in (ids[0], ids[-1])):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"jobs did not complete: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    finally:
        stop_worker(worker)
    results = usage(client, RESULT_KEYS)
    completed = {"job_keys": own_keys(client, ids),
                 "all_keys": (usage(client) - before - results) / n,
                 "result_backend": results / n}
    client.delete(*client.keys(RESULT_KEYS))
    for job_id in ids:
        client.delete(Keys("default").job(job_id), Keys("default").job_events(job_id))
    return {"payload_bytes": len(json.dumps(payload)),
            **{f"pending_{k}": round(v) for k, v in pending.items()},
            **{f"completed_{k}": round(v) for k, v in completed.items()}}


def main() -> None:
    args = quick_args(__doc__)
    n = 50 if args.quick else 500
    url, stop = start_redis()
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        app = create_app(url)
        log = Path(tempfile.mkdtemp(prefix="emp-bench-memory-")) / "worker.log"
        result: dict[str, Any] = {"bench": "job_memory", "jobs": n}
        for name, payload in PAYLOADS.items():
            result[name] = measure(app, client, url, payload, n, log)
            print(name, result[name], flush=True)
        big = result["100kb"]
        ratio = big["completed_job_keys"] / big["payload_bytes"]
        result["big_job_keys_to_payload"] = round(ratio, 2)
        result["verdict"] = verdict(ratio <= 1.25)
        app.close()
    finally:
        stop()
    emit_json(result)


if __name__ == "__main__":
    os.environ.setdefault("EMP_LEASE_SECONDS", "5")
    main()
