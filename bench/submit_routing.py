"""Submit latency with routing on against off, in the same run: ``producer.submit`` p50/p99.

One private Redis; no worker runs (jobs stay pending, as in a backlog). The
pools are the shipped ``conf/pools.toml`` (fast, standard, heavy); each has
two live workers (registry heartbeats) and idle marks, and 20 models are
warm here and there, so the router reads real state. Jobs are a mix of
short, image and video simulation jobs, half naming one of 20 models.
Routing on: ``EMP_POOLS_FILE`` set (the router decides each job's pool,
pool state cached 1 s, refreshed in the run); off: unset (every job to
"default", today's path). The two alternate in blocks of 200 submits so
drift on a shared machine hits both alike; each side's first block is
warm-up and left out. Quick: 8 blocks per side; full: 40. Target: p99 with
routing <= 1.2x p99 without. Final line: JSON.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, quick_args, start_redis, summary, verdict  # noqa: E402
from capability_router.functions import ensure_library  # noqa: E402
from capability_router.keys import Keys  # noqa: E402
from capability_router.pools import DEFAULT_POOLS_FILE, POOLS_FILE_ENV  # noqa: E402
from capability_router.profile import WorkerProfile  # noqa: E402
from capability_router.registry import WorkerRegistry  # noqa: E402

BLOCK = 200
TARGET_RATIO = 1.2
MODELS = [f"model-{i:02d}" for i in range(20)]
PAYLOADS = [
    {"steps": 4, "duration": 1},
    {"steps": 20, "width": 1024, "height": 1024, "duration": 1},
    {"steps": 20, "width": 512, "height": 512, "frames": 96, "duration": 1},
]


def live_pools(client: redis.Redis, rng: random.Random) -> None:
    """Two live, idle workers per pool with some models warm."""
    for pool in ("fast", "standard", "heavy"):
        for n in range(2):
            worker_id = f"{pool}-{n}"
            profile = WorkerProfile(worker_id=worker_id, services=["simulation"])
            WorkerRegistry(client).heartbeat(profile.as_dict(), [pool], [], 3_600_000)
            client.zadd(Keys(pool).idle, {f"{profile.signature}:{worker_id}":
                                          int(time.time() * 1000) + 3_600_000})
            for model in rng.sample(MODELS, 5):
                client.zadd(Keys(pool).warm(model), {worker_id: 1})


def main() -> None:
    args = quick_args(__doc__)
    blocks = 8 if args.quick else 40
    rng = random.Random(13)
    url, stop = start_redis()
    os.environ["EMP_REDIS_URL"] = url
    os.environ.pop(POOLS_FILE_ENV, None)
    try:
        from emp_tasks.app import create_app
        from emp_tasks.producer import submit

        app = create_app(url)
        client = redis.Redis.from_url(url, decode_responses=True)
        ensure_library(client)
        live_pools(client, rng)
        samples: dict[str, list[float]] = {"off": [], "on": []}
        routed_to: dict[str, int] = {}

        def run_block(side: str, keep: bool) -> None:
            if side == "on":
                os.environ[POOLS_FILE_ENV] = str(DEFAULT_POOLS_FILE)
            else:
                os.environ.pop(POOLS_FILE_ENV, None)
            for _ in range(BLOCK):
                payload = dict(rng.choice(PAYLOADS))
                requirements = {"models": [rng.choice(MODELS)]} if rng.random() < 0.5 else None
                started = time.perf_counter()
                result = submit("simulation", payload, requirements=requirements, app=app)
                elapsed = (time.perf_counter() - started) * 1000
                if keep:
                    samples[side].append(elapsed)
                    if side == "on":
                        pool = client.hget(f"emp:{{{pick_pool(client, result.id)}}}:job:"
                                           f"{result.id}", "pool")
                        routed_to[pool] = routed_to.get(pool, 0) + 1

        for i in range(blocks + 1):
            for side in (("off", "on") if i % 2 == 0 else ("on", "off")):
                run_block(side, keep=i > 0)
        app.close()
    finally:
        os.environ.pop(POOLS_FILE_ENV, None)
        stop()
    off, on = summary(samples["off"]), summary(samples["on"])
    ratio = on["p99"] / off["p99"]
    print(f"submit p50/p99 ms: routing off {off['p50']}/{off['p99']}, on {on['p50']}/{on['p99']}"
          f" (p99 ratio {ratio:.2f}); routed: {routed_to}")
    emit_json({
        "benchmark": "submit_routing", "quick": args.quick, "block": BLOCK, "blocks": blocks,
        "routing_off_ms": off, "routing_on_ms": on, "p99_ratio": round(ratio, 3),
        "p50_ratio": round(on["p50"] / off["p50"], 3), "routed_to": routed_to,
        "target_p99_ratio": TARGET_RATIO, "verdict": verdict(ratio <= TARGET_RATIO),
    })


def pick_pool(client: redis.Redis, job_id: str) -> str:
    """The pool a job was filed in (a routed job is in one of the three)."""
    for pool in ("fast", "standard", "heavy"):
        if client.exists(Keys(pool).job(job_id)):
            return pool
    return "default"


if __name__ == "__main__":
    main()
