"""Chaos: 1,000 jobs, 3 workers, one SIGKILLed and restarted every few seconds."""

from __future__ import annotations

import random
import time

import pytest

from capability_router.keys import Keys
from emp_tasks.producer import submit

JOBS = 1_000
WORKERS = 3
KILL_EVERY = 2.5
TIMEOUT = 300.0

pytestmark = pytest.mark.slow


def test_chaos_every_job_completes_once_killing_stops(app, client, start_worker) -> None:
    workers = [start_worker(f"chaos-{n}") for n in range(WORKERS)]
    ids = [submit("echo", {"n": n, "sleep": 0.05}, app=app).id for n in range(JOBS)]
    keys = [Keys("default").job(job_id) for job_id in ids]
    rng = random.Random(7)
    kills = 0
    started = time.monotonic()
    next_kill = started + KILL_EVERY
    statuses: list[str] = []
    while time.monotonic() - started < TIMEOUT:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "status")
            statuses = pipe.execute()
        if all(s == "completed" for s in statuses):
            break
        if time.monotonic() >= next_kill:
            victim = rng.randrange(WORKERS)
            workers[victim].kill()
            kills += 1
            workers[victim] = start_worker(f"chaos-{victim}-{kills}", wait=False)
            next_kill = time.monotonic() + KILL_EVERY
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "attempts")
        attempts = [int(a or 0) for a in pipe.execute()]
    ran_more_than_once = sum(1 for a in attempts if a > 1)
    counts = {s: statuses.count(s) for s in set(statuses)}
    print(f"\nchaos: {JOBS} jobs, {WORKERS} workers, {kills} SIGKILLs in {elapsed:.1f}s; "
          f"statuses {counts}; ran more than once: {ran_more_than_once}; "
          f"max attempts {max(attempts)}")
    assert counts == {"completed": JOBS}, f"lost or stuck jobs: {counts}"
    assert kills >= 3, "the run ended before workers were killed repeatedly"
