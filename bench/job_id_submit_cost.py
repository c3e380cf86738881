"""What making a job id unique across pools costs a submit: Redis requests and time.

A submit through ``emp_tasks.producer.submit`` (Celery's ``apply_async``, as the API's
``POST /api/jobs`` files a job), N times, with the id made by the server (uuid4) and
with an id the caller chose, on a Redis that knows 1 and 4 pools. Per submit: the
requests the producer sends (counted with ``MONITOR``; the commands a Redis Function
runs inside are left out) by name, and the client's wall time (a second run, without
``MONITOR``). Run it on the code
before and after a change to compare; it asserts nothing. N = 500 (quick 100).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, quick_args, start_redis  # noqa: E402


def count_requests(url: str, run: Any) -> collections.Counter[str]:
    """Run ``run`` while MONITOR watches; the client requests seen, by command name."""
    seen: collections.Counter[str] = collections.Counter()
    client = redis.Redis.from_url(url, decode_responses=True)
    done = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for line in monitor.listen():
                command = line["command"]
                if line.get("client_type") == "lua" or "lua" in str(line.get("client_address")):
                    continue
                name = command.split(" ", 1)[0].strip('"').upper()
                if name == "GET" and "bench:stop" in command:
                    return
                seen[name] += 1
                if done.is_set() and "bench:stop" in command:
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    run()
    done.set()
    redis.Redis.from_url(url).get("bench:stop")
    thread.join(10)
    return seen


def main() -> None:
    args = quick_args(__doc__)
    n = 100 if args.quick else 500
    url, stop = start_redis()
    os.environ["BENCH_REDIS_URL"] = url
    try:
        from bench import _noop_tasks as tasks
        from capability_router.keys import NAMESPACES_KEY
        from emp_tasks.producer import submit

        client = redis.Redis.from_url(url)
        out: dict[str, Any] = {}
        submit("noop", {}, app=tasks.emp_app)  # warm: library loaded, pool noted
        for pools in (1, 4):
            if pools > 1:
                client.sadd(NAMESPACES_KEY, *(f"extra{i}" for i in range(pools - 1)))
            for kind in ("generated", "chosen"):
                def run(kind: str = kind) -> None:
                    for _ in range(n):
                        task_id = uuid.uuid4().hex if kind == "chosen" else None
                        submit("noop", {}, app=tasks.emp_app, task_id=task_id)
                seen = count_requests(url, run)
                started = time.perf_counter()
                run()  # timed apart: MONITOR slows every command
                wall = time.perf_counter() - started
                name = f"{kind}_id_{pools}_pools"
                out[name] = {"requests_per_submit": round(sum(seen.values()) / n, 2),
                             "by_command": {k: round(v / n, 2) for k, v in seen.most_common()},
                             "client_us_per_submit": round(wall * 1e6 / n)}
                print(f"{name}: {out[name]}", flush=True)
        emit_json(out)
    finally:
        stop()


if __name__ == "__main__":
    main()
