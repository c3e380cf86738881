"""What an operator sees of the queue: pending classes, who serves them, wait and claim metrics."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import redis
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import NAMESPACES_KEY, Keys
from capability_router.metrics import (
    CLAIM,
    CLAIM_BOUNDS,
    WAIT,
    WAIT_BOUNDS,
    HistogramBuffer,
    bucket_field,
    le_text,
    metrics_key,
    read_histograms,
)
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from conftest import wait_for
from emp_tasks.local_redis import free_port
from emp_tasks.producer import get_job, submit
from webapp.monitor.metrics import QueueCollector, register
from webapp.monitor.queue import profile_signature, queue_summary

ANY = WorkerProfile(worker_id="any", services=["echo"])


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def enqueue(queue: QueueFunctions, job_id: str, now_ms: int, due_ms: int = 0,
            **fields: object) -> JobSpec:
    """File a job directly (a fake message: only for jobs no real worker will claim)."""
    spec = JobSpec.from_fields({"service_required": "echo", **fields})
    assert queue.enqueue(job_id, spec, json.dumps({"id": job_id}), due_ms=due_ms,
                         now_ms=now_ms)[0] in ("queued", "delayed")
    return spec


def metric_fields(client: redis.Redis, namespace: str = "default") -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall(metrics_key(namespace)).items()}


def test_class_no_live_worker_can_serve_is_flagged_and_a_servable_one_names_its_worker(
        app, client, start_worker) -> None:
    start_worker("w24", WORKER_GPU_MEMORY_GB="24")
    queue = QueueFunctions(client, "default")
    now = server_ms(client)
    big = {"hardware": {"gpu_memory_gb": 80}}
    for job_id, age_s in (("big-1", 90), ("big-2", 30), ("big-3", 10)):
        enqueue(queue, job_id, now - age_s * 1000, requirements=big)
    # Keep the only worker busy, so a job it can serve stays pending.
    blocker = submit("echo", {"sleep": 30}, app=app)
    wait_for(lambda: get_job(blocker.id, app=app)["status"] == "in_progress",
             message="the blocking job to run")
    sixteen = {"hardware": {"gpu_memory_gb": 16}}
    submit("echo", {"x": 1}, requirements=sixteen, app=app)
    # The registry learns the worker is busy at its next lease renewal.
    wait_for(lambda: WorkerRegistry(client).workers()[0]["status"] == "busy",
             message="the worker to report busy")

    summary = queue_summary(client)

    unservable, servable = summary["classes"]
    assert unservable["unservable"] and unservable["workers"] == []
    assert unservable["pending"] == 3 and unservable["service"] == "echo"
    assert unservable["requirements"] == ["hardware.gpu_memory_gb >= 80"]
    assert 89 <= unservable["oldest_age_seconds"] <= 100
    assert servable["class"] == JobSpec(service="echo", requirements=sixteen).class_signature
    assert servable["workers"] == ["w24"] and not servable["unservable"]
    assert servable["pending"] == 1
    pool = summary["pools"][0]
    assert pool["pool"] == "default" and pool["pending"] == 4 and pool["unservable_classes"] == 1
    assert pool["jobs"]["in_progress"] == 1 and pool["jobs"]["pending"] == 4
    assert summary["workers"] == {"total": 1, "idle": 0, "busy": 1, "service_unhealthy": 0,
                                  "silent": 0}
    # The signature rebuilt from the registry is the one the worker registered.
    record, = WorkerRegistry(client).workers()
    assert client.hkeys(Keys("default").profiles) == [profile_signature(record)]


def test_worker_compatible_with_a_class_of_a_pool_it_does_not_consume_cannot_serve_it(
        client, start_worker) -> None:
    start_worker("w1")
    record, = WorkerRegistry(client).workers()
    # Its profile is known in pool "other" (as if it had consumed it once) but
    # it consumes only "default" now.
    other = QueueFunctions(client, "other")
    other.register_worker(WorkerProfile.from_dict(record["profile"]))
    client.sadd(NAMESPACES_KEY, "other")
    enqueue(other, "o-1", server_ms(client), pool="other")

    rows = queue_summary(client)["classes"]

    assert [(r["pool"], r["pending"], r["unservable"], r["workers"]) for r in rows] == [
        ("other", 1, True, [])]


def test_oldest_age_is_the_oldest_job_even_when_a_newer_higher_priority_job_is_the_head(
        client, queue) -> None:
    now = server_ms(client)
    enqueue(queue, "old-low", now - 120_000, priority=10)
    enqueue(queue, "newer-low", now - 60_000, priority=10)
    enqueue(queue, "mid", now - 30_000, priority=50)
    enqueue(queue, "head", now - 5_000, priority=90)
    enqueue(queue, "later", now, due_ms=now + 600_000)

    raw = queue.queue_summary()
    summary = queue_summary(client, now_ms=now)

    assert raw.delayed == 1
    only, = raw.classes
    assert only.pending == 4 and only.oldest_ms == now - 120_000
    assert only.head_score == str(10 * 10**13 + now - 5_000)
    row, = summary["classes"]
    assert row["oldest_age_seconds"] == 120.0 and row["pending"] == 4
    assert row["unservable"] and row["requirements"] == []
    assert summary["pools"][0]["delayed"] == 1
    # Claims take priority first, then age: the oldest follows what is left.
    queue.register_worker(ANY)
    oldest = []
    for _ in range(4):
        assert isinstance(queue.claim(ANY.signature, "any", 60_000, now_ms=now), Claimed)
        oldest.append([c.oldest_ms for c in queue.queue_summary().classes])
    assert oldest == [[now - 120_000], [now - 120_000], [now - 60_000], []]


def test_summary_reloads_the_library_when_the_server_lost_it(client, queue) -> None:
    enqueue(queue, "j-1", server_ms(client))
    client.function_flush()
    assert [r["pending"] for r in queue_summary(client)["classes"]] == [1]
    client.function_flush()
    assert queue.queue_summary().classes[0].pending == 1


def test_readable_requirements_show_every_condition(client, queue) -> None:
    enqueue(queue, "r-1", server_ms(client), customer_id="acme", requirements={
        "hardware": {"gpu_memory_gb": 16}, "models": ["sdxl", "flux"], "region": "eu",
        "customer_isolation": "strict", "negative_requirements": {"tier": "spot"}})

    row, = queue_summary(client)["classes"]

    assert row["requirements"] == [
        "hardware.gpu_memory_gb >= 16", "models.echo includes flux, sdxl", "region = eu",
        "not tier = spot", "isolated for customer acme"]
    assert row["customer_id"] == "acme" and row["strict"]


def claim_after(queue: QueueFunctions, job_id: str, at_ms: int) -> None:
    claimed = queue.claim(ANY.signature, "any", 60_000, now_ms=at_ms)
    assert isinstance(claimed, Claimed) and claimed.job_id == job_id
    assert queue.complete(job_id, claimed.attempt, {}) == "ok"


def test_wait_histogram_buckets_in_lua_equal_the_python_bounds(client, queue) -> None:
    queue.register_worker(ANY)
    waits_ms = [0, 7_200_000]
    for bound in WAIT_BOUNDS:
        edge = round(bound * 1000)
        waits_ms += [edge, edge + 1]
    t = server_ms(client)
    seen = set()
    for i, wait in enumerate(waits_ms):
        t += 10_000_000  # forward only: housekeeping compares with the last sweep
        before = metric_fields(client)
        enqueue(queue, f"w-{i}", t)
        claim_after(queue, f"w-{i}", t + wait)
        after = metric_fields(client)
        changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        field = bucket_field(WAIT, wait / 1000)
        expected = {field: 1, "wait:sum_ms": wait}
        if not wait:
            del expected["wait:sum_ms"]  # HINCRBY by 0 changes nothing
        assert changed == expected, f"wait {wait} ms"
        seen.add(field)
    assert seen == {f"wait:{le_text(b)}" for b in (*WAIT_BOUNDS, float("inf"))}

    histogram = read_histograms(client, "default")[WAIT]
    assert histogram.count == len(waits_ms)
    assert histogram.sum == pytest.approx(sum(waits_ms) / 1000)
    assert histogram.buckets[0] == (0.005, 2)  # 0 and 5 ms
    assert histogram.buckets[-1] == (float("inf"), len(waits_ms))


def test_wait_of_a_delayed_job_counts_from_when_it_came_due(client, queue) -> None:
    queue.register_worker(ANY)
    t = server_ms(client)
    enqueue(queue, "eta", t, due_ms=t + 60_000)
    claim_after(queue, "eta", t + 60_040)  # due 40 ms ago: not a minute
    # A job missing from the pending index falls back to its creation time.
    enqueue(queue, "unindexed", t + 70_000)
    client.zrem(Keys("default").status_index("pending"), "unindexed")
    claim_after(queue, "unindexed", t + 72_000)

    fields = metric_fields(client)

    assert fields["wait:0.05"] == 1 and fields["wait:2.5"] == 1
    assert fields["wait:sum_ms"] == 2_040
    assert read_histograms(client, "default")[WAIT].count == 2


def test_claim_latency_histogram_fills_after_a_real_worker_ran_jobs(
        app, client, start_worker) -> None:
    start_worker("w1")
    results = [submit("echo", {"n": n}, app=app) for n in range(3)]
    for result in results:
        result.get(timeout=30)

    # Flushed with the lease renewals: every third of EMP_LEASE_SECONDS=2.
    wait_for(lambda: read_histograms(client, "default")[CLAIM].count >= 3, timeout=15,
             message="claim latencies to be flushed")
    histogram = read_histograms(client, "default")[CLAIM]
    assert [b for b, _ in histogram.buckets] == [*CLAIM_BOUNDS, float("inf")]
    counts = [n for _, n in histogram.buckets]
    assert counts == sorted(counts) and counts[-1] == histogram.count
    assert 0 < histogram.sum < histogram.count * 1.0  # round trips, not seconds each
    assert read_histograms(client, "default")[WAIT].count == 3


def test_histogram_buffer_flush_adds_to_the_counters_and_drops_only_a_failed_batch(
        client, redis_server) -> None:
    buffer = HistogramBuffer(CLAIM)
    for seconds in (0.0004, 0.0005, 0.002, 3.0):
        buffer.observe("default", seconds)
    assert buffer.flush(client) > 0
    buffer.observe("default", 0.0001)
    dead = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    assert buffer.flush(dead) == 0  # lost, but no exception reaches the worker
    dead.close()
    buffer.observe("default", 0.0001)
    buffer.flush(client)

    histogram = read_histograms(client, "default")[CLAIM]

    assert histogram.count == 5
    assert histogram.buckets[0] == (0.0005, 3) and histogram.buckets[2] == (0.0025, 4)
    assert histogram.buckets[-1] == (float("inf"), 5)
    assert histogram.sum == pytest.approx(0.0004 + 0.0005 + 0.002 + 3.0 + 0.0001, abs=1e-6)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_collector_exposes_queue_workers_and_histograms(
        client, queue, redis_server) -> None:
    now = server_ms(client)
    big = enqueue(queue, "big", now - 45_000, requirements={"hardware": {"gpu_memory_gb": 80}})
    small = enqueue(queue, "small", now - 3_000)
    enqueue(queue, "small-2", now)
    gpu24 = WorkerProfile(worker_id="g24", services=["echo"], hardware={"gpu_memory_gb": 24})
    queue.register_worker(gpu24)
    WorkerRegistry(client).heartbeat(gpu24.as_dict(), ["default"], [], ttl_ms=60_000, first=True)
    claim_after_wait = queue.claim(gpu24.signature, "g24", 60_000, now_ms=now + 20)
    assert claim_after_wait.job_id == "small"  # the class head: waited 3.02 s
    buffer = HistogramBuffer(CLAIM)
    buffer.observe("default", 0.0007)
    buffer.flush(client)

    registry = CollectorRegistry()
    collector = register(redis_server.url, registry)
    assert register(redis_server.url, registry) is collector  # idempotent
    try:
        got = samples(generate_latest(registry).decode())
    finally:
        collector.client.close()

    def at(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    big_labels = {"pool": "default", "family": big.family_signature, "service": "echo",
                  "requirements": "hardware.gpu_memory_gb >= 80"}
    small_labels = {"pool": "default", "family": small.family_signature, "service": "echo",
                    "requirements": "none"}
    assert at("emp_queue_depth", **big_labels) == 1
    assert at("emp_queue_class_workers", **big_labels) == 0
    assert 45 <= at("emp_queue_oldest_seconds", **big_labels) < 60
    assert at("emp_queue_depth", **small_labels) == 1
    assert at("emp_queue_class_workers", **small_labels) == 1
    assert at("emp_jobs", pool="default", status="pending") == 2
    assert at("emp_jobs", pool="default", status="assigned") == 1
    assert at("emp_workers", status="idle") == 1 and at("emp_workers", status="busy") == 0
    assert at("emp_job_wait_seconds_bucket", pool="default", le="2.5") == 0
    assert at("emp_job_wait_seconds_bucket", pool="default", le="5.0") == 1
    assert at("emp_job_wait_seconds_count", pool="default") == 1
    assert at("emp_job_wait_seconds_sum", pool="default") == pytest.approx(3.02)
    assert at("emp_claim_latency_seconds_bucket", pool="default", le="0.0005") == 0
    assert at("emp_claim_latency_seconds_bucket", pool="default", le="0.001") == 1
    assert at("emp_claim_latency_seconds_count", pool="default") == 1


def test_collector_says_redis_is_down_and_logs_the_outage_once(caplog) -> None:
    """Redis refusing connections: each scrape gives only ``emp_redis_up 0``; the outage
    is logged once (it was a warning per scrape)."""
    collector = QueueCollector(f"redis://127.0.0.1:{free_port()}/0")
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        with caplog.at_level(logging.WARNING):
            texts = [generate_latest(registry).decode() for _ in range(3)]
    finally:
        collector.client.close()
    for text in texts:
        assert samples(text) == {("emp_redis_up", frozenset()): 0}
    assert caplog.text.count("Redis unreachable") == 1, caplog.text


def scrape(redis_url: str, families_per_pool: int | None = None) -> str:
    collector = (QueueCollector(redis_url) if families_per_pool is None
                 else QueueCollector(redis_url, families_per_pool))
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        return generate_latest(registry).decode()
    finally:
        collector.client.close()


def queue_series(text: str) -> dict[str, dict[str, tuple[dict[str, str], float]]]:
    """``emp_queue_*`` samples: metric name -> family label -> (labels, value)."""
    series: dict[str, dict[str, tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("emp_queue_"):
                series.setdefault(sample.name, {})[sample.labels["family"]] = (
                    sample.labels, sample.value)
    return series


def file_workflows(client: redis.Redis, queue: QueueFunctions, families: list[dict],
                   workflows: int, now: int) -> list[JobSpec]:
    """One job per workflow (its own class), round robin over ``families``, pipelined."""
    specs = []
    with client.pipeline(transaction=False) as pipe:
        for n in range(workflows):
            spec = JobSpec.from_fields({"service_required": "echo", **families[n % len(families)],
                                        "workflow_id": f"wf-{n}", "customer_id": f"cust-{n}"})
            name, keys, args = queue.enqueue_call(f"wf-job-{n}", spec, json.dumps({"n": n}),
                                                  now_ms=now - n * 1000)
            pipe.fcall(name, len(keys), *keys, *args)
            specs.append(spec)
        assert {r[0] for r in pipe.execute()} == {"queued"}
    return specs


def test_queue_series_are_one_per_family_however_many_workflows_wait(
        client, queue, redis_server) -> None:
    """600 pending jobs, each its own workflow and customer, over 3 requirement families.

    Before, the collector labelled the queue gauges by class, which includes the
    workflow and customer: 1,800 series (3 per workflow), every workflow id a new
    series in Prometheus. Now 9: depth, oldest and workers per family, with the
    family's requirements in words and no customer or workflow id in any label.
    """
    now = server_ms(client)
    families = [{}, {"requirements": {"hardware": {"gpu_memory_gb": 80}}},
                {"requirements": {"hardware": {"gpu_memory_gb": 16}, "models": ["sdxl"]}}]
    specs = file_workflows(client, queue, families, 600, now)
    gpu24 = WorkerProfile(worker_id="g24", services=["echo"], hardware={"gpu_memory_gb": 24},
                          models={"echo": ["sdxl"]})
    queue.register_worker(gpu24)
    WorkerRegistry(client).heartbeat(gpu24.as_dict(), ["default"], [], ttl_ms=60_000,
                                     first=True)

    text = scrape(redis_server.url)

    counts = Counter(s.name for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name.startswith("emp_queue_"))
    assert counts == {"emp_queue_depth": 3, "emp_queue_oldest_seconds": 3,
                      "emp_queue_class_workers": 3}
    series = queue_series(text)
    signatures = {spec.family_signature for spec in specs}
    assert len(signatures) == 3
    for name in series:
        assert set(series[name]) == signatures, name
    plain, big, sdxl = (specs[i].family_signature for i in range(3))
    depth = {f: v for f, (_, v) in series["emp_queue_depth"].items()}
    assert depth == {plain: 200, big: 200, sdxl: 200}
    oldest = {f: v for f, (_, v) in series["emp_queue_oldest_seconds"].items()}
    # The oldest job of family i was filed (597 + i) seconds ago.
    assert 597 <= oldest[plain] < 610 and 598 <= oldest[big] < 611
    assert 599 <= oldest[sdxl] < 612
    workers = {f: v for f, (_, v) in series["emp_queue_class_workers"].items()}
    assert workers == {plain: 1, big: 0, sdxl: 1}
    labels, _ = series["emp_queue_depth"][sdxl]
    assert labels == {"pool": "default", "family": sdxl, "service": "echo",
                      "requirements": "hardware.gpu_memory_gb >= 16; models.echo includes sdxl"}
    assert "wf-" not in text and "cust-" not in text


def test_a_family_with_one_class_nobody_can_serve_reports_zero_workers(
        client, queue, redis_server) -> None:
    """Two customers' jobs of one family; the only live worker denies one of them.

    The family is servable, but that customer's jobs wait forever: its series
    must still read 0 workers (the alert), not the other customer's 1. (Per
    class, before, the denied customer's class had a 0 series of its own.)
    """
    now = server_ms(client)
    enqueue(queue, "ok", now - 1_000, customer_id="good")
    enqueue(queue, "stuck", now - 2_000, customer_id="denied")
    picky = WorkerProfile(worker_id="picky", services=["echo"],
                          customer_access={"denied_customers": ["denied"]})
    queue.register_worker(picky)
    WorkerRegistry(client).heartbeat(picky.as_dict(), ["default"], [], ttl_ms=60_000,
                                     first=True)

    series = queue_series(scrape(redis_server.url))

    (family, (labels, depth)), = series["emp_queue_depth"].items()
    assert depth == 2 and "denied" not in str(labels)
    assert series["emp_queue_class_workers"][family][1] == 0
    assert [r["workers"] for r in queue_summary(client)["classes"]] == [[], ["picky"]]


def test_families_past_the_cap_are_summed_into_other_and_unservable_ones_keep_theirs(
        client, queue, redis_server) -> None:
    """Families come from what submitters ask, so a pool's series are capped.

    Five families, a cap of 2: the unservable family keeps its own series even
    though it is the youngest, then the oldest servable one; the other three
    are one ``family="other"`` series: depth summed, oldest the max, workers
    the least. Before, nothing capped the queue series: one per class.
    """
    now = server_ms(client)
    for n, gpu in enumerate((1, 2, 4, 8)):  # ages 40, 30, 20, 10 s: all servable
        for k in range(n + 1):
            enqueue(queue, f"g{gpu}-{k}", now - (4 - n) * 10_000,
                    requirements={"hardware": {"gpu_memory_gb": gpu}})
    huge = enqueue(queue, "huge", now, requirements={"hardware": {"gpu_memory_gb": 640}})
    oldest = JobSpec(service="echo", requirements={"hardware": {"gpu_memory_gb": 1}})
    gpu24 = WorkerProfile(worker_id="g24", services=["echo"], hardware={"gpu_memory_gb": 24})
    queue.register_worker(gpu24)
    WorkerRegistry(client).heartbeat(gpu24.as_dict(), ["default"], [], ttl_ms=60_000,
                                     first=True)

    series = queue_series(scrape(redis_server.url, families_per_pool=2))

    for name in series:
        assert set(series[name]) == {huge.family_signature, oldest.family_signature,
                                     "other"}, name
    value = {name: {f: v for f, (_, v) in rows.items()} for name, rows in series.items()}
    assert value["emp_queue_depth"] == {huge.family_signature: 1,
                                        oldest.family_signature: 1, "other": 2 + 3 + 4}
    assert value["emp_queue_class_workers"] == {huge.family_signature: 0,
                                                oldest.family_signature: 1, "other": 1}
    assert 30 <= value["emp_queue_oldest_seconds"]["other"] < 40
    assert series["emp_queue_depth"]["other"][0] == {
        "pool": "default", "family": "other", "service": "other", "requirements": "other"}


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_family_cap_is_refused_naming_the_setting(monkeypatch, value) -> None:
    """The monitor does not start with a cap that is no positive integer (a cap of 0
    would hide every family's series, the unservable ones too)."""
    monkeypatch.setenv("EMP_METRICS_MAX_FAMILIES", value)
    with pytest.raises(ValueError, match="EMP_METRICS_MAX_FAMILIES"):
        QueueCollector(f"redis://127.0.0.1:{free_port()}/0")


def sent_event_senders(base: str) -> Counter[str]:
    """``flower_events_total{type="task-sent"}`` by its ``worker`` label, from /metrics."""
    reply = requests.get(base + "/metrics", timeout=10)
    assert reply.status_code == 200, reply.text
    senders: Counter[str] = Counter()
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            if s.name == "flower_events_total" and s.labels.get("type") == "task-sent":
                senders[s.labels["worker"]] += int(s.value)
    return senders


def test_task_sent_events_of_many_producer_processes_are_one_series_per_host(
        start_server, redis_server, app) -> None:
    """Tried: scraped the monitor's /metrics after jobs were submitted from four
    processes (this one, and three `python -c submit(...)` like cron scripts or
    `emp submit`). Before, Flower labelled each task-sent event with its sender's
    anonymous node name, `gen<pid>@<host>`, so every producer process (each CLI run,
    each retrying worker child) left a new flower_events_total and _created series
    behind for the monitor's life: an unbounded label set. Now the pid is dropped
    (`gen@<host>`): one series per host, and the counts add up."""
    monitor = start_server("monitor")

    def one_counted() -> int:  # /health answers before Flower listens to events
        submit("echo", {"x": 0}, requirements={"hardware": {"gpu_memory_gb": 999}}, app=app)
        return sum(sent_event_senders(monitor.base).values())

    wait_for(one_counted, every=0.5, message="the monitor to count a task-sent event")
    before = sum(sent_event_senders(monitor.base).values())
    code = ("from emp_tasks.producer import submit; "
            "submit('echo', {'x': 1}, requirements={'hardware': {'gpu_memory_gb': 999}})")
    env = {**os.environ, "EMP_REDIS_URL": redis_server.url}
    for _ in range(3):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    senders = wait_for(lambda: (lambda s: s if sum(s.values()) >= before + 3 else None)(
        sent_event_senders(monitor.base)), message="the three processes' task-sent events")
    assert set(senders) == {f"gen@{socket.gethostname()}"}


def test_oldest_seconds_says_it_counts_from_the_workflow_datetime(client, queue,
                                                                  redis_server) -> None:
    """Tried: filed a job just now whose workflow started 3 h ago (workflow_datetime), and
    scraped. emp_queue_oldest_seconds is ~10,800: it counts from a job's effective time,
    the order the queue keeps (the wait histogram counts from entering pending). Before,
    its HELP (and the README) said "age of the oldest pending job", so an alert on it
    read a step queued a second ago as waiting for three hours. Now the HELP says what
    it counts from."""
    now = server_ms(client)
    enqueue(queue, "late-step", now, workflow_id="wf-old",
            workflow_datetime=now - 3 * 3600 * 1000)
    families = {f.name: f for f in text_string_to_metric_families(scrape(redis_server.url))}
    oldest = families["emp_queue_oldest_seconds"]
    assert 3 * 3600 <= oldest.samples[0].value < 3 * 3600 + 60
    assert "workflow_datetime" in oldest.documentation


def test_a_scrape_waiting_on_a_slow_redis_does_not_stall_the_monitor(
        start_server, client) -> None:
    """Tried: paused Redis for 3 s (CLIENT PAUSE), scraped /metrics, and meanwhile asked
    the same monitor for Flower's /healthcheck, which reads nothing from Redis. Before,
    the collector read Redis on the monitor's event loop, so the health check (and every
    page, action and live stream) waited until the scrape ended: 2.7 s here, up to the
    collector's 5 s Redis timeout per scrape. Now the scrape reads on the executor, as
    the monitor's other Redis reads do, and the health check answers at once."""
    monitor = start_server("monitor")
    assert requests.get(monitor.base + "/metrics", timeout=10).status_code == 200
    scraped: list[requests.Response] = []
    client.client_pause(3000, all=True)
    scrape_thread = threading.Thread(target=lambda: scraped.append(
        requests.get(monitor.base + "/metrics", timeout=15)))
    scrape_thread.start()
    time.sleep(0.3)  # the scrape is waiting on Redis now
    started = time.monotonic()
    health = requests.get(monitor.base + "/healthcheck", timeout=15)
    waited = time.monotonic() - started
    scrape_thread.join()
    assert health.status_code == 200
    assert waited < 1.0, f"/healthcheck waited {waited:.1f} s behind the scrape"
    assert scraped[0].status_code == 200 and "emp_workers" in scraped[0].text
