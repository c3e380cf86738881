"""The monitor's Prometheus scrape on a real Redis Cluster: two pools on different
masters, their queue series read from the per-family pending index, first filled by
the scrape itself for jobs an older release left pending."""

from __future__ import annotations

import json

import pytest
from cluster_fixtures import *  # noqa: F403 - the cluster fixtures
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capability_router.functions import QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import NAMESPACES_KEY, Keys
from webapp.monitor.metrics import QueueCollector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def depths(url: str) -> dict[tuple[str, str], float]:
    collector = QueueCollector(url)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.client.close()
    return {(s.labels["pool"], s.labels["family"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "emp_queue_depth"}


def test_queue_depth_per_family_of_pools_on_two_masters(cluster, cclient, pools) -> None:
    """Tried: 30 workflows in one pool and 20 in the other (pools whose keys live on
    different masters), 2 families each; scraped once as release 18 left them (no
    per-family index) and once after. Both scrapes give each family's depth."""
    cclient.sadd(NAMESPACES_KEY, *pools)
    specs = {}
    for pool, count in zip(pools, (30, 20), strict=True):
        queue = QueueFunctions(cclient, pool)
        for n in range(count):
            spec = JobSpec.from_fields({
                "service_required": "echo", "workflow_id": f"wf-{n}",
                "requirements": {"hardware": {"gpu_memory_gb": 8 * (1 + n % 2)}}})
            specs.setdefault((pool, spec.family_signature), []).append(n)
            assert queue.enqueue(f"{pool}-{n}", spec, json.dumps({"n": n}))[0] == "queued"
        keys = Keys(pool)
        families = [f for p, f in specs if p == pool]
        cclient.delete(*(keys.prefix + "fam-pending:" + f for f in families))
        cclient.hdel(keys.config, "family_index")
    expected = {key: float(len(jobs)) for key, jobs in specs.items()}

    assert depths(cluster.url) == expected
    assert depths(cluster.url) == expected
    assert all(cclient.hget(Keys(pool).config, "family_index") == "1" for pool in pools)
