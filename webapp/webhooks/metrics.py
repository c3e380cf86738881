"""The webhook service's Prometheus metrics: delivery outcomes, latency, attempts, backlog.

The figures are this process's (the service runs one gunicorn process; each
instance is scraped on its own and Prometheus sums them). The backlog is read
from Redis at scrape time: one ``LLEN`` per registered hook, pipelined.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from webapp.auth import metrics_guard
from webapp.outage import ungated
from webapp.webhooks import keys
from webapp.webhooks.library import Outcome

logger = logging.getLogger(__name__)

#: ``Outcome.kind`` of an attempt -> its ``outcome`` label; other kinds sent nothing.
OUTCOMES = {"delivered": "delivered", "retry": "retry", "failed": "gave_up",
            "refused": "refused"}
#: Replies of the enqueue function the consumer counts (``result`` label).
FILED = ("queued", "dropped", "throttled")
#: Event -> receiver's answer, seconds: a healthy receiver is well under a second, a
#: delivery retried through an outage takes minutes to an hour.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 900.0, 3600.0)
#: One HTTP request to a receiver, seconds (the sender's timeout caps it).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ATTEMPT_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100)

blueprint = Blueprint("webhook_metrics", __name__)


def event_ms(event_id: str) -> int | None:
    """When the event entered the log: the ms of ``<source>:<ms>-<seq>``; None for an id of
    another form."""
    head = event_id.rpartition(":")[2].partition("-")[0]
    return int(head) if head.isdigit() else None


class Backlog:
    """``emp_webhook_backlog``: deliveries waiting in every hook's queue, read at scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterable[Metric]:
        try:
            hooks = self.client.zrange(keys.HOOKS, 0, -1)
            with self.client.pipeline(transaction=False) as pipe:
                for hook_id in hooks:
                    pipe.llen(keys.queue(hook_id))
                lengths = pipe.execute()
        except redis.RedisError as exc:  # the scrape still has the counters
            logger.warning("webhook metrics: backlog not read (%s)", exc)
            return []
        return [GaugeMetricFamily(
            "emp_webhook_backlog",
            "Deliveries waiting in the hooks' queues, the one in flight included.",
            value=sum(lengths))]


class WebhookMetrics:
    """The service's metrics in its own registry (apps built in one process do not collide)."""

    def __init__(self, client: redis.Redis) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "emp_webhook_deliveries_total",
            "Delivery attempts by outcome: delivered (2xx), retry (failed, tried again), "
            "gave_up (failed for good), refused (address refused).",
            ("outcome",), registry=self.registry)
        for outcome in OUTCOMES.values():
            self.deliveries.labels(outcome)
        self.filed = Counter(
            "emp_webhook_filed_total",
            "Deliveries the consumer made of events, by result: queued, dropped (the hook's "
            "backlog full), throttled (progress, one a second per job and hook).",
            ("result",), registry=self.registry)
        for result in FILED:
            self.filed.labels(result)
        self.latency = Histogram(
            "emp_webhook_delivery_latency_seconds",
            "Seconds from an event's entry in the event log to its receiver's 2xx, retries "
            "included (Redis' clock).", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.request = Histogram(
            "emp_webhook_request_duration_seconds",
            "Seconds of one attempt's HTTP request to the receiver, any outcome.",
            buckets=REQUEST_BUCKETS, registry=self.registry)
        self.attempts = Histogram(
            "emp_webhook_delivery_attempts",
            "Attempts a delivery took until delivered or given up.",
            buckets=ATTEMPT_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.registry.register(Backlog(client))

    def attempted(self, delivery: dict[str, str], outcome: Outcome) -> None:
        """Count one attempt of ``delivery`` (its hash as claimed) and what came of it."""
        label = OUTCOMES.get(outcome.kind)
        if label is None or outcome.attempt is None:
            return  # parked or skipped: nothing was sent
        self.deliveries.labels(label).inc()
        record = outcome.attempt
        if record.get("latency_ms") is not None:
            self.request.observe(record["latency_ms"] / 1000)
        if label in ("delivered", "gave_up"):
            self.attempts.observe(int(delivery.get("attempts") or 0) + 1)
        logged = event_ms(delivery.get("event_id", ""))
        if label == "delivered" and logged is not None:
            answered = int(record["timestamp"]) + int(record.get("latency_ms") or 0)
            self.latency.observe(max(0, answered - logged) / 1000)

    def filed_results(self, replies: Iterable[str]) -> None:
        """Count the enqueue function's replies of one batch."""
        for reply in replies:
            if reply in FILED:
                self.filed.labels(reply).inc()


@blueprint.get("/metrics")
@ungated
@metrics_guard
def scrape():  # noqa: ANN201 - Flask response
    """Prometheus text of this service (admin, unless EMP_METRICS_PUBLIC=1)."""
    metrics: WebhookMetrics = current_app.extensions["emp_webhooks"].metrics
    return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)
