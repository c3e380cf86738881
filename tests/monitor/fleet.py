"""A fleet of live machines made up in Redis, for the Machines page's tests."""

from __future__ import annotations

import time
from typing import Any

import redis

from capability_router.registry import WorkerRegistry
from machine.status import now_ms, publish


def publish_fleet(client: redis.Redis, machines: int, workers: int) -> list[dict[str, Any]]:
    """``machines`` live machine records (``box-000``, ...) of ``workers`` mock GPUs and
    simulation workers each, every worker registered for 10 minutes; returns the records."""
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
                ["default"], [], 600_000, first=True)
    return records
