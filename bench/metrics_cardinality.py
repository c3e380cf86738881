"""What one Prometheus scrape of the queue costs when every request is its own workflow.

One private Redis; pending jobs of 20,000 distinct workflows (quick: 2,000),
one job each, spread over 50 requirement families (service x GPU memory x
model), 5 live worker records able to serve some of them. Then the queue
collector (``webapp.monitor.metrics``, what Flower serves at ``/metrics``) is
scraped into a registry of its own: the number of ``emp_queue_*`` series, the
bytes of the whole exposition, and the times of ``collect()`` and of the
whole exposition (median of 3 each). For comparison, the same run times the
class-by-class reading the collector made before library release 19
(``family_rows`` of ``queue_summary``: every class's count, oldest job and
servers, summed per family in Python), which now serves only the Queue view.
A class is tied to its workflow, a family is not (``jobspec``): a label per
class makes one series per workflow; one per family keeps it to the families.

Figures (2-core machine shared with other jobs), collect / whole exposition:
release 18, 2,000 workflows 68.5-96.9 / 80.3-100.1 ms, 20,000 987-1423 / 884-1729
ms; release 19 (the per-family pending index), 2,000 6.0-7.3 / 7.4-10.3 ms,
20,000 7.3-7.7 / 9.5-10.5 ms.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from statistics import median

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json, quick_args, start_redis  # noqa: E402
from capability_router.functions import QueueFunctions  # noqa: E402
from capability_router.jobspec import JobSpec  # noqa: E402
from capability_router.keys import NAMESPACES_KEY  # noqa: E402
from capability_router.profile import WorkerProfile  # noqa: E402
from capability_router.registry import WorkerRegistry  # noqa: E402
from webapp.monitor.metrics import QueueCollector, family_rows  # noqa: E402
from webapp.monitor.queue import queue_summary  # noqa: E402

POOL = "default"
FAMILIES = 50


def family_fields(index: int) -> dict[str, object]:
    """Requirements of family ``index``: 2 services x 5 GPU sizes x 5 models = 50."""
    service = ("comfyui", "simulation")[index % 2]
    gpu = (8, 16, 24, 48, 80)[(index // 2) % 5]
    model = f"model-{index // 10}"
    return {"service_required": service,
            "requirements": {"hardware": {"gpu_memory_gb": gpu}, "models": [model]}}


def fill(client: redis.Redis, workflows: int, batch: int = 2000) -> None:
    """One pending job per workflow, filed with pipelined ``emp_enqueue`` calls."""
    queue = QueueFunctions(client, POOL)
    queue.register_worker(WorkerProfile(worker_id="boot", services=["comfyui"]))
    client.sadd(NAMESPACES_KEY, POOL)
    now = int(time.time() * 1000)
    for start in range(0, workflows, batch):
        with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(workflows, start + batch)):
                spec = JobSpec.from_fields({**family_fields(n % FAMILIES),
                                            "workflow_id": f"wf-{n}",
                                            "customer_id": f"cust-{n % 997}"})
                name, keys, args = queue.enqueue_call(f"j{n}", spec, json.dumps({"id": n}),
                                                      now_ms=now - n)
                pipe.fcall(name, len(keys), *keys, *args)
            for reply in pipe.execute():
                if reply[0] not in (b"queued", "queued"):
                    raise RuntimeError(f"enqueue refused: {reply}")
    registry = WorkerRegistry(client)
    for i, gpu in enumerate((24, 24, 48, 80, 80)):
        profile = WorkerProfile(worker_id=f"w{i}", services=["comfyui", "simulation"],
                                hardware={"gpu_memory_gb": gpu},
                                models={"comfyui": ["all"], "simulation": ["all"]})
        queue.register_worker(profile)
        registry.heartbeat(profile.as_dict(), [POOL], [], ttl_ms=600_000, first=True)


def scrape(url: str) -> dict[str, float]:
    """Series and bytes of one exposition, and the median times of ``collect()``, of
    the whole exposition (``generate_latest``: collect plus the text) and of the
    class-by-class family rows the collector read before release 19."""
    collector = QueueCollector(url)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            list(collector.collect())
            times.append(time.perf_counter() - started)
        scrapes = []
        for _ in range(3):
            started = time.perf_counter()
            text = generate_latest(registry)
            scrapes.append(time.perf_counter() - started)
        by_class = []
        for _ in range(3):
            started = time.perf_counter()
            family_rows(queue_summary(collector.client)["classes"], collector.families_per_pool)
            by_class.append(time.perf_counter() - started)
    finally:
        collector.client.close()
    series = sum(len(f.samples) for f in text_string_to_metric_families(text.decode())
                 if f.name.startswith("emp_queue_"))
    return {"queue_series": series, "exposition_bytes": len(text),
            "collect_ms": round(median(times) * 1000, 1),
            "scrape_ms": round(median(scrapes) * 1000, 1),
            "class_by_class_ms": round(median(by_class) * 1000, 1)}


def main() -> None:
    args = quick_args(__doc__)
    workflows = 2_000 if args.quick else 20_000
    url, stop = start_redis()
    try:
        client = redis.Redis.from_url(url)
        started = time.perf_counter()
        fill(client, workflows)
        filled = time.perf_counter() - started
        result = {"workflows": workflows, "families": FAMILIES,
                  "fill_seconds": round(filled, 1), **scrape(url)}
        print(f"{workflows} workflows over {FAMILIES} families: "
              f"{result['queue_series']} emp_queue_* series, "
              f"{result['exposition_bytes']:,} bytes, collect {result['collect_ms']} ms, "
              f"scrape {result['scrape_ms']} ms; the class-by-class reading of "
              f"release 18 and before: {result['class_by_class_ms']} ms")
        emit_json(result)
    finally:
        stop()


if __name__ == "__main__":
    main()
