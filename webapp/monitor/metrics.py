"""Prometheus metrics of the queue, read from Redis at scrape time.

Flower serves ``prometheus_client.REGISTRY`` at ``/metrics``; ``register``
adds this collector to it, so one scrape gives Flower's Celery metrics and
the queue's. Nothing is cached in the monitor: every scrape reads Redis
(a few pipelined round trips), so any number of monitors report the same.

Metrics:

* ``emp_queue_depth{pool,class,service}``: pending jobs of a requirement class.
* ``emp_queue_oldest_seconds{pool,class,service}``: age of its oldest pending job.
* ``emp_queue_class_workers{pool,class,service}``: live workers able to
  serve it; 0 means nobody alive can run it (alert on this).
* ``emp_jobs{pool,status}``: jobs per state (listing index sizes).
* ``emp_workers{status}``: live workers, idle, busy or service_unhealthy.
* ``emp_job_wait_seconds{pool}``: histogram of how long claimed jobs waited.
* ``emp_claim_latency_seconds{pool}``: histogram of workers' claim round trips.
* ``emp_pool_desired_machines{pool}``: machines the pool should have now (the
  elastic scaler's answer, as ``/api/pools`` gives it; ``conf/keda.yaml``
  scales on it).
"""

from __future__ import annotations

import logging
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

from capability_router.cluster import make_client
from capability_router.errors import PoolsFileError
from capability_router.metrics import CLAIM, WAIT, Histogram, histograms_from_hash, metrics_key
from capability_router.pool_view import pools_view
from capability_router.pools import pools_file_from_env
from webapp.monitor.queue import queue_summary

logger = logging.getLogger(__name__)

#: Seconds a scrape waits on Redis before giving up (Prometheus times out too).
REDIS_TIMEOUT_SECONDS = 5.0

_HISTOGRAMS = {
    WAIT: ("emp_job_wait_seconds",
           "Time claimed jobs waited to be claimed (since pending, or due), seconds."),
    CLAIM: ("emp_claim_latency_seconds",
            "Workers' claim round trip for claims that returned a job, seconds."),
}


def _families() -> dict[str, Metric]:
    return {
        "depth": GaugeMetricFamily(
            "emp_queue_depth", "Pending jobs of a requirement class.",
            labels=["pool", "class", "service"]),
        "oldest": GaugeMetricFamily(
            "emp_queue_oldest_seconds", "Age of the oldest pending job of a class, seconds.",
            labels=["pool", "class", "service"]),
        "class_workers": GaugeMetricFamily(
            "emp_queue_class_workers",
            "Live workers able to serve a class with pending jobs (0: unservable).",
            labels=["pool", "class", "service"]),
        "jobs": GaugeMetricFamily(
            "emp_jobs", "Jobs per state, per pool.", labels=["pool", "status"]),
        "workers": GaugeMetricFamily(
            "emp_workers", "Live workers by state (idle, busy, service_unhealthy).",
            labels=["status"]),
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

    def __init__(self, redis_url: str) -> None:
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
        """Every family, read now; nothing (and a warning) when Redis cannot be read."""
        try:
            families = self._read()
        except (redis.RedisError, OSError) as exc:
            logger.warning("queue metrics skipped: cannot read Redis at %s: %s",
                           self._safe_url(), exc)
            return
        except Exception:  # a bad record must not take Flower's own metrics down with it
            logger.exception("queue metrics skipped: could not build them")
            return
        yield from families

    def _read(self) -> list[Metric]:
        client = self.client
        summary = queue_summary(client)
        families = _families()
        for row in summary["classes"]:
            labels = [row["pool"], row["class"], row["service"]]
            families["depth"].add_metric(labels, row["pending"])
            families["oldest"].add_metric(labels, row["oldest_age_seconds"])
            families["class_workers"].add_metric(labels, len(row["workers"]))
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
        for row in pools_view(client, _pools_file()):
            families["desired"].add_metric([row["name"]], row["desired_machines"])
        return list(families.values())

    def _safe_url(self) -> str:
        """The URL without its password, for logs."""
        kwargs: dict[str, Any] = self.client.connection_pool.connection_kwargs
        host = kwargs.get("host") or kwargs.get("path") or "?"
        return f"{host}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"


def _pools_file() -> Any:
    """The pools file for the scaling policies; a broken one is logged and left out."""
    try:
        return pools_file_from_env()
    except PoolsFileError as exc:
        logger.warning("desired machines use default scaling settings: %s", exc)
        return None


_lock = threading.Lock()
_registered: dict[int, tuple[CollectorRegistry, QueueCollector]] = {}


def register(
    redis_url: str, registry: CollectorRegistry = prometheus_client.REGISTRY
) -> QueueCollector:
    """Add the queue collector to ``registry`` once per process; returns it.

    Calling again (a monitor rebuilt in the same process, tests) returns the
    same collector, pointed at ``redis_url``, instead of registering a
    duplicate, which prometheus_client would refuse.
    """
    with _lock:
        entry = _registered.get(id(registry))
        if entry is not None and entry[0] is registry:
            entry[1].use(redis_url)
            return entry[1]
        collector = QueueCollector(redis_url)
        registry.register(collector)
        _registered[id(registry)] = (registry, collector)
        return collector


__all__ = ["QueueCollector", "register"]
