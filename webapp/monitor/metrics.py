"""Prometheus metrics of the queue, read from Redis at scrape time.

Flower serves ``prometheus_client.REGISTRY`` at ``/metrics``; ``register``
adds this collector to it, so one scrape gives Flower's Celery metrics and
the queue's. Nothing is cached in the monitor: every scrape reads Redis
(a few pipelined round trips), so any number of monitors report the same.
The queue series come from the library's per-family pending index
(``queue_families``), so a scrape's cost follows the families, not the
workflows or classes waiting.

Metrics:

* ``emp_redis_up``: 1 when the scrape read the queue from Redis, 0 when it could not
  (the queue series are then left out). During a known outage a scrape answers at once
  with 0 instead of waiting 5 s on Redis; a background ping, one at a time, ends it.
* ``emp_queue_depth{pool,family,service,requirements}``: pending jobs of a
  requirement family (summed over its classes).
* ``emp_queue_oldest_seconds{pool,family,service,requirements}``: seconds since
  the effective time of its oldest pending job (the queue's order: workflow_datetime
  when set, else submit time, which a retry keeps), so a late step of an old workflow
  reads old at once; the pending index orders by it, a true time-in-pending per
  family would need another index.
* ``emp_queue_class_workers{pool,family,service,requirements}``: live workers
  able to serve its least served pending class; 0 means some of its pending
  jobs nobody alive can run (alert on this).

The queue's series are per requirement *family*, not per class: a class is
also tied to its workflow and customer (``capability_router.jobspec``), and
nearly every request is its own workflow, so a series per class was one per
workflow (20,000 pending workflows: 60,000 series, 5 MB per scrape, each
workflow id a series left in the TSDB). A family is what matching reads
(service, hardware, models, isolation, capabilities): ``family`` is its
signature and ``requirements`` its conditions in words (``hardware.gpu_memory_gb
>= 80; models.comfyui includes sdxl``, at most ``REQUIREMENTS_LABEL_CHARS``
characters, never a customer or workflow id). Families come from the
submitted requirements, so each pool gets at most ``EMP_METRICS_MAX_FAMILIES``
(100) series of its own: those no live worker can fully serve first, then the
oldest; the rest are summed into one ``family="other"`` series (depth summed,
oldest the max, workers the least), so a scrape never grows past
``3 x pools x (max + 1)`` queue series.
* ``emp_jobs{pool,status}``: jobs per state (listing index sizes).
* ``emp_workers{status}``: live workers, idle, busy or service_unhealthy.
* ``emp_job_wait_seconds{pool}``: histogram of how long claimed jobs waited.
* ``emp_claim_latency_seconds{pool}``: histogram of workers' claim round trips.

Per pool, over the current minute and the 4 before it (``pool_metrics.PROMETHEUS_MINUTES``,
5 minute slots: 4 to 5 minutes) of the observability ring (definitions in
``capability_router.pool_metrics``); a ratio with nothing to divide by (no claims, no
live worker) is left out, not NaN:

* ``emp_pool_utilization{pool}``: busy / live worker-seconds; busy counts running
  jobs, so workers running several at once (``-c N``) read above 1.
* ``emp_pool_queue_efficiency{pool}``: total wait / total run time.
* ``emp_pool_wait_p95_seconds{pool}``: 95th percentile of claimed jobs' waits.
* ``emp_pool_throughput_per_minute{pool}``: jobs completed per minute of the time those
  minutes cover (not per 5: that read a steady rate 20% low early in each minute).
* ``emp_pool_model_hits{pool,kind}``: claims by model residency (warm, disk,
  download, none, unreported); ``emp_pool_hit_rate{pool}``: warm share.
* ``emp_pool_routing_accuracy{pool}``: routed jobs run within 2x the prediction.
* ``emp_pool_machines{pool,state}``: live workers now, and the scaler's
  desired machines when it set them (``state="desired"``).
* ``emp_pool_desired_machines{pool}``: machines the pool should have now (the
  elastic scaler's answer, as ``/api/pools`` gives it; ``conf/keda.yaml``
  scales on it).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import prometheus_client
import redis
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from redis.backoff import NoBackoff
from redis.retry import Retry

from capability_router.cluster import SOCKET_TIMEOUT_SECONDS, make_client
from capability_router.errors import PoolsFileError
from capability_router.functions import redis_now_ms
from capability_router.metrics import CLAIM, WAIT, Histogram, histograms_from_hash, metrics_key
from capability_router.pool_metrics import HIT_KINDS, read_now, recent
from capability_router.pool_view import pools_view
from capability_router.pools import POOLS_FILE_ENV, PoolsFileWatch
from emp_tasks import defaults
from webapp.monitor.queue_families import queue_families
from webapp.outage import UNAVAILABLE, Outage

logger = logging.getLogger(__name__)

#: Seconds a scrape waits on Redis before giving up (Prometheus times out too): the
#: setting every client follows (``EMP_REDIS_SOCKET_TIMEOUT``).
REDIS_TIMEOUT_SECONDS = SOCKET_TIMEOUT_SECONDS

_HISTOGRAMS = {
    WAIT: ("emp_job_wait_seconds",
           "Time claimed jobs waited to be claimed (since pending, or due), seconds."),
    CLAIM: ("emp_claim_latency_seconds",
            "Workers' claim round trip for claims that returned a job, seconds."),
}


#: pool_metrics figure -> (gauge name, help), over the last 5 minutes.
_POOL_GAUGES = {
    "utilization": ("emp_pool_utilization",
                    "Running jobs' seconds / live worker-seconds, last 5 minutes (above 1 "
                    "when workers run several jobs at once, emp worker -c N)."),
    "queue_efficiency": ("emp_pool_queue_efficiency",
                         "Total wait / total run time of the last 5 minutes' jobs."),
    "wait_p95_seconds": ("emp_pool_wait_p95_seconds",
                         "95th percentile of claimed jobs' wait, last 5 minutes, seconds."),
    "throughput_per_minute": ("emp_pool_throughput_per_minute",
                              "Jobs completed per minute, last 5 minutes."),
    "hit_rate": ("emp_pool_hit_rate",
                 "Claims finding the job's models in the GPU / claims of jobs with models, "
                 "last 5 minutes."),
    "routing_accuracy": ("emp_pool_routing_accuracy",
                         "Routed jobs that ran within 2x the predicted time, last 5 minutes."),
}


#: Families of a pool with series of their own (``EMP_METRICS_MAX_FAMILIES``).
MAX_FAMILIES = 100
#: The ``family`` (and ``service``, ``requirements``) of the series summing the rest.
OTHER = "other"
#: Longest ``requirements`` label value, characters (longer ones end with "...").
REQUIREMENTS_LABEL_CHARS = 120

_QUEUE_LABELS = ["pool", "family", "service", "requirements"]


def max_families() -> int:
    """``EMP_METRICS_MAX_FAMILIES``; ValueError naming it unless a positive integer."""
    return defaults.env_positive("EMP_METRICS_MAX_FAMILIES", MAX_FAMILIES, int)


def requirements_label(row: dict[str, Any]) -> str:
    """A class row's conditions in words, without its customer: the family's label."""
    conditions = [c for c in row["requirements"] if not c.startswith("isolated for customer")]
    if row.get("strict"):
        conditions.append("isolated for its customer")
    text = "; ".join(conditions) or "none"
    if len(text) > REQUIREMENTS_LABEL_CHARS:
        text = text[:REQUIREMENTS_LABEL_CHARS - 3] + "..."
    return text


def family_rows(classes: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """``queue_summary`` class rows summed per (pool, family), at most ``limit`` per pool.

    A row: ``pool``, ``family``, ``service``, ``requirements`` (label text),
    ``pending`` (sum), ``oldest_age_seconds`` (max) and ``workers`` (the fewest
    live workers any of its classes has: 0 when one of them nobody can run).
    A pool keeps its unservable families first, then its oldest; those past
    ``limit`` are summed into one row with family, service and requirements
    ``"other"``.
    """
    return capped_families(list(_summed(classes).values()), limit)


def _summed(classes: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    families: dict[tuple[str, str], dict[str, Any]] = {}
    for row in classes:
        key = (row["pool"], row["family"])
        family = families.get(key)
        if family is None:
            families[key] = {
                "pool": row["pool"], "family": row["family"], "service": row["service"],
                "requirements": requirements_label(row), "pending": row["pending"],
                "oldest_age_seconds": row["oldest_age_seconds"],
                "workers": len(row["workers"])}
            continue
        family["pending"] += row["pending"]
        family["oldest_age_seconds"] = max(family["oldest_age_seconds"],
                                           row["oldest_age_seconds"])
        family["workers"] = min(family["workers"], len(row["workers"]))
    return families


def capped_families(families: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Family rows (``pool``, ``family``, ``service``, ``requirements``, ``pending``,
    ``oldest_age_seconds``, ``workers``), at most ``limit`` per pool: unservable
    first, then the oldest; the rest summed into one ``"other"`` row."""
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for family in families:
        by_pool.setdefault(family["pool"], []).append(family)
    rows: list[dict[str, Any]] = []
    for pool, pool_families in by_pool.items():
        pool_families.sort(key=lambda f: (f["workers"] > 0, -f["oldest_age_seconds"],
                                          f["family"]))
        rows += pool_families[:limit]
        rest = pool_families[limit:]
        if rest:
            rows.append({
                "pool": pool, "family": OTHER, "service": OTHER, "requirements": OTHER,
                "pending": sum(f["pending"] for f in rest),
                "oldest_age_seconds": max(f["oldest_age_seconds"] for f in rest),
                "workers": min(f["workers"] for f in rest)})
    return rows


def _families() -> dict[str, Metric]:
    return {
        "depth": GaugeMetricFamily(
            "emp_queue_depth", "Pending jobs of a requirement family.",
            labels=_QUEUE_LABELS),
        "oldest": GaugeMetricFamily(
            "emp_queue_oldest_seconds",
            "Seconds since the effective time of a family's oldest pending job: its "
            "workflow_datetime when set, else its submit time (kept by a retry or requeue); "
            "not its time in pending (emp_job_wait_seconds).",
            labels=_QUEUE_LABELS),
        "class_workers": GaugeMetricFamily(
            "emp_queue_class_workers",
            "Live workers able to serve the least served pending class of a family "
            "(0: some of its jobs are unservable).",
            labels=_QUEUE_LABELS),
        "jobs": GaugeMetricFamily(
            "emp_jobs", "Jobs per state, per pool.", labels=["pool", "status"]),
        "workers": GaugeMetricFamily(
            "emp_workers", "Live workers by state (idle, busy, service_unhealthy).",
            labels=["status"]),
        **{key: GaugeMetricFamily(name, text, labels=["pool"])
           for key, (name, text) in _POOL_GAUGES.items()},
        "pool_hits": GaugeMetricFamily(
            "emp_pool_model_hits", "Claims of the last 5 minutes by the model residency they "
            "found (warm, disk, download, none, unreported).", labels=["pool", "kind"]),
        "pool_machines": GaugeMetricFamily(
            "emp_pool_machines", "Live workers of the pool now, and the desired machines "
            "the scaler set (when it did).", labels=["pool", "state"]),
        "desired": GaugeMetricFamily(
            "emp_pool_desired_machines",
            "Machines the pool should have now (elastic scaler; see /api/pools).",
            labels=["pool"]),
        WAIT: HistogramMetricFamily(*_HISTOGRAMS[WAIT], labels=["pool"]),
        CLAIM: HistogramMetricFamily(*_HISTOGRAMS[CLAIM], labels=["pool"]),
    }


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(floatToGoString(bound), count) for bound, count in histogram.buckets]


class QueueCollector(Collector):
    """Reads the queue's state from Redis on every ``collect()``."""

    def __init__(self, redis_url: str, families_per_pool: int | None = None,
                 outage: Outage | None = None) -> None:
        #: Families per pool with series of their own; more are summed as "other".
        self.families_per_pool = families_per_pool or max_families()
        #: Whether Redis is known unreachable: the monitor's, so the process says it once.
        self.outage = outage or Outage("emp monitor metrics")
        self.redis_url = redis_url
        self.client = self._connect(redis_url)

    @staticmethod
    def _connect(redis_url: str) -> redis.Redis:
        # No retries: a scrape that cannot reach Redis should end within
        # Prometheus's scrape timeout, and the next scrape is the retry.
        return make_client(
            redis_url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0))

    def use(self, redis_url: str) -> None:
        """Point the collector at another Redis (a second ``register`` with a new URL)."""
        if redis_url != self.redis_url:
            old, self.client, self.redis_url = self.client, self._connect(redis_url), redis_url
            old.close()

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so registering reads nothing from Redis."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        """``emp_redis_up`` and every family, read now; only ``emp_redis_up 0`` when Redis
        cannot be read, or at once (without waiting on it) during a known outage."""
        families = self._families_now()
        up = GaugeMetricFamily(
            "emp_redis_up", "1: this scrape read the queue from Redis; 0: Redis unreachable "
            "(the queue series are left out).")
        up.add_metric([], 0 if families is None else 1)
        yield up
        yield from families or ()

    def _families_now(self) -> list[Metric] | None:
        """The families, or None when Redis cannot be read.

        During a known outage (this process's ``Outage``, shared with the monitor's
        handlers) a scrape does not wait on Redis: it starts a background ping (one at a
        time) that ends the outage once Redis answers, and gives None at once. Before,
        every scrape of a hung Redis held a thread for the 5 s socket timeout."""
        if self.outage.down:
            threading.Thread(target=self._probe, name="emp-metrics-probe", daemon=True).start()
            return None
        try:
            return self._read()
        except UNAVAILABLE as exc:  # logged once per outage, by the outage
            self.outage.failed(exc)
        except (redis.RedisError, OSError) as exc:
            logger.warning("queue metrics skipped: cannot read Redis at %s: %s",
                           self._safe_url(), exc)
        except Exception:  # a bad record must not take Flower's own metrics down with it
            logger.exception("queue metrics skipped: could not build them")
        return None

    def _probe(self) -> None:
        """One ping at a time during an outage; the one that answers ends it."""
        with self.outage.probing() as admitted:
            if not admitted:
                return
            try:
                self.client.ping()
            except UNAVAILABLE as exc:
                self.outage.failed(exc)
                return
        self.outage.succeeded()

    def _read(self) -> list[Metric]:
        client = self.client
        summary = queue_families(client)
        families = _families()
        labelled = [{**row, "requirements": requirements_label(row)}
                    for row in summary["families"]]
        for row in capped_families(labelled, self.families_per_pool):
            labels = [row["pool"], row["family"], row["service"], row["requirements"]]
            families["depth"].add_metric(labels, row["pending"])
            families["oldest"].add_metric(labels, row["oldest_age_seconds"])
            families["class_workers"].add_metric(labels, row["workers"])
        pools = [p["pool"] for p in summary["pools"]]
        for pool_row in summary["pools"]:
            for status, count in pool_row["jobs"].items():
                families["jobs"].add_metric([pool_row["pool"], status], count)
        for status in ("idle", "busy", "service_unhealthy"):
            families["workers"].add_metric([status], summary["workers"][status])
        with client.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.hgetall(metrics_key(pool))
            hashes = pipe.execute()
        for pool, fields in zip(pools, hashes, strict=True):
            histograms = histograms_from_hash(fields)
            for name, histogram in histograms.items():
                families[name].add_metric([pool], _buckets(histogram), histogram.sum)
        self._pools(client, pools, families)
        for row in pools_view(client, pools_file()):
            families["desired"].add_metric([row["name"]], row["desired_machines"])
        return list(families.values())

    @staticmethod
    def _pools(client: redis.Redis, pools: list[str], families: dict[str, Metric]) -> None:
        """The per-pool observability gauges (``capability_router.pool_metrics``)."""
        now_ms = redis_now_ms(client)  # the clock the pools' minutes are kept on
        for pool, figures in recent(client, pools, now_ms).items():
            for key in _POOL_GAUGES:
                if figures[key] is not None:
                    families[key].add_metric([pool], figures[key])
            for kind in HIT_KINDS:
                families["pool_hits"].add_metric([pool, kind], figures["hits"][kind])
            now = read_now(client, pool, now_ms)
            families["pool_machines"].add_metric([pool, "live"], now["live_workers"])
            if now["desired"] is not None:
                families["pool_machines"].add_metric([pool, "desired"], now["desired"])

    def _safe_url(self) -> str:
        """The URL without its password, for logs."""
        kwargs: dict[str, Any] = self.client.connection_pool.connection_kwargs
        host = kwargs.get("host") or kwargs.get("path") or "?"
        return f"{host}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"


#: Path -> the pools file watched for the scaling policies and the Pools page.
_pools_watches: dict[str, PoolsFileWatch] = {}


def pools_file() -> Any:
    """The monitor's pools file (scaling policies, the Pools page's list). A broken edit
    keeps the last good version (logged by the watch, as routing does): default settings
    instead would ask KEDA for more than the pool's ``max_machines`` and drop the pools no
    worker serves. Broken from the start: logged, and default settings."""
    path = os.environ.get(POOLS_FILE_ENV, "").strip()
    if not path:
        return None
    watch = _pools_watches.setdefault(path, PoolsFileWatch(path, "emp_pool_desired_machines"))
    try:
        return watch.current()
    except PoolsFileError as exc:
        logger.warning("desired machines use default scaling settings: %s", exc)
        return None


#: Celery's name for a process that is no worker (``gen<pid>@<host>``): producers' task-sent.
_ANONYMOUS_NODE = re.compile(r"^gen\d+@")


def sender_label(hostname: str) -> str:
    """Flower's ``worker`` label for an event's sender: a producer's anonymous node name
    without its pid (``gen@<host>``), so each submitting process (a CLI run, a worker child
    retrying) does not add series that stay for the monitor's life; workers keep theirs."""
    return _ANONYMOUS_NODE.sub("gen@", hostname, count=1)


def bound_flower_senders() -> None:
    """Label Flower's task metrics (``flower_events_total``...) with ``sender_label``.

    Flower labels every task event with its sender's node name; a task-sent event comes
    from the submitting process, whose name carries its pid. Once per process."""
    from flower.events import get_prometheus_metrics

    flower_metrics = get_prometheus_metrics()
    if getattr(flower_metrics, "emp_bounded_senders", False):
        return
    observe = flower_metrics.observe_task

    def observe_task(worker: str, event: Any, task: Any) -> None:
        observe(sender_label(worker), event, task)

    flower_metrics.observe_task = observe_task
    flower_metrics.emp_bounded_senders = True


_lock = threading.Lock()
_registered: dict[int, tuple[CollectorRegistry, QueueCollector]] = {}


def register(
    redis_url: str, registry: CollectorRegistry = prometheus_client.REGISTRY,
    outage: Outage | None = None,
) -> QueueCollector:
    """Add the queue collector to ``registry`` once per process; returns it. ``outage``:
    the process's (the monitor's), which a scrape then shares.

    Calling again (a monitor rebuilt in the same process, tests) returns the
    same collector, pointed at ``redis_url``, instead of registering a
    duplicate, which prometheus_client would refuse.
    """
    with _lock:
        entry = _registered.get(id(registry))
        if entry is not None and entry[0] is registry:
            entry[1].use(redis_url)
            if outage is not None:
                entry[1].outage = outage
            return entry[1]
        collector = QueueCollector(redis_url, outage=outage)
        registry.register(collector)
        _registered[id(registry)] = (registry, collector)
        return collector


__all__ = ["QueueCollector", "bound_flower_senders", "capped_families", "family_rows",
           "max_families", "register", "sender_label"]
