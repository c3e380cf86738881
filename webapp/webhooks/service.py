"""The delivery side of one service process: a consumer thread and dispatcher threads.

Started by the app factory in the gunicorn worker (after the fork). Start-up
waits for Redis, loads the function library and releases the leases an
earlier run of the same instance name still held, then starts the threads;
all are daemons, so a stopped process simply stops sending and its work is
picked up again from Redis.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from typing import Any

import redis

from capability_router.eviction import warn_if_evicting
from capability_router.outages import UNREACHABLE, describe
from emp_tasks import tracing
from webapp.outage import Outage
from webapp.webhooks.addresses import AddressPolicy
from webapp.webhooks.config import WebhookConfig
from webapp.webhooks.consumer import EventConsumer
from webapp.webhooks.dispatcher import Dispatcher
from webapp.webhooks.library import WebhookFunctions, ensure_library
from webapp.webhooks.metrics import WebhookMetrics
from webapp.webhooks.sender import Sender
from webapp.webhooks.store import HookStore
from webapp.webhooks.wakeup import Wakeup

logger = logging.getLogger(__name__)

#: A thread that has not looped for this long counts as stuck in /health, seconds.
STALE_AFTER_SECONDS = 30.0


class DeliveryService:
    """Registrations store, sender and (once started) the delivery threads.

    :param client: Redis client (``decode_responses=True``).
    :param config: service tunables.
    :param outage: the process's outage state, shared by the delivery threads and the
        routes (``webapp.outage``): one line when an outage starts, one when it ends.
    """

    def __init__(self, client: redis.Redis, config: WebhookConfig,
                 outage: Outage | None = None) -> None:
        self.client = client
        self.config = config
        self.outage = outage or Outage(
            "emp webhooks", "answering 503 and holding deliveries until it is back")
        self.policy = AddressPolicy(config.allow_private, config.allowed_networks)
        self.sender = Sender(self.policy, config.timeout_seconds, config.dispatchers)
        self.store = HookStore(client, config)
        self.metrics = WebhookMetrics(client)
        self.wake = Wakeup(config.dispatchers)
        self.stopping = threading.Event()
        self.run_id = uuid.uuid4().hex[:8]
        self.consumer: EventConsumer | None = None
        self.dispatchers: list[Dispatcher] = []
        self.threads: list[threading.Thread] = []
        self.started = False

    def start(self) -> DeliveryService:
        """Start the delivery threads (once Redis answers); returns at once.

        At interpreter exit (gunicorn's worker stopping) the threads are asked
        to stop, so the consumer role is handed over at once.
        """
        # Tracing (when on) is set up here, once, not raced by the dispatchers' first
        # spans, and before the stop hook: exit hooks run last-in first, so the spans
        # of the deliveries the stop waits for are sent after it.
        tracing.job_tracer()
        atexit.register(self.stop, 2.0)
        thread = threading.Thread(target=self._boot, name="webhooks-boot", daemon=True)
        thread.start()
        self.threads.append(thread)
        return self

    def _boot(self) -> None:
        """Wait for Redis (trying once a second), then start delivery.

        An unreachable Redis is the process's outage (``self.outage``): one line when
        it starts, shared with the routes' and threads' (before, "waiting for Redis"
        once a second), one when Redis answers. Any other refusal (a function load
        refused, say) is logged when it first appears, not at every try."""
        refused = None
        while not self.stopping.is_set():
            try:
                ensure_library(self.client)
                released = WebhookFunctions(self.client).release(f"{self.config.instance}:")
                warn_if_evicting(self.client, "emp webhooks")
                break
            except UNREACHABLE as exc:
                self.outage.failed(exc)
            except redis.RedisError as exc:
                if describe(exc) != refused:
                    refused = describe(exc)
                    logger.error("webhook service: Redis refuses the start of delivery (%s); "
                                 "trying again every second", refused)
            self.stopping.wait(1.0)
        else:
            return
        self.outage.succeeded()
        if released:
            logger.info("webhook service: released %d lease(s) of an earlier run", released)
        self.consumer = EventConsumer(self.client, self.config, on_queued=self.wake.notify,
                                      run_id=self.run_id, outage=self.outage,
                                      metrics=self.metrics)
        self._spawn("webhooks-consumer", self.consumer.run)
        prefix = f"{self.config.instance}:{self.run_id}:"
        for n in range(self.config.dispatchers):
            dispatcher = Dispatcher(self.client, self.config, self.sender, self.wake, prefix,
                                    self.outage, self.metrics)
            self.dispatchers.append(dispatcher)
            self._spawn(f"webhooks-dispatch-{n}", dispatcher.run)
        self.started = True
        logger.info("webhook service: consuming as %r with %d dispatcher(s)",
                    self.config.instance, self.config.dispatchers)

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, args=(self.stopping,), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the threads to stop and wait for them (in-process tests, shutdown)."""
        self.stopping.set()
        self.wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.sender.close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): Redis answers and, when started, the threads loop; when
        it does not, ``details["error"]`` is the exception."""
        try:
            self.client.ping()
            redis_state = "ok"
        except redis.RedisError as exc:  # the route logs it (webapp.outage), then drops it
            return False, {"redis": f"error: {exc}", "error": exc}
        now = time.monotonic()
        consumer = self.consumer
        delivery: dict[str, Any] = {"running": self.started}
        if self.started and consumer is not None:
            delivery.update({
                "consumer_alive": now - consumer.alive_at < STALE_AFTER_SECONDS,
                "consumer_role": "consuming" if consumer.leading else "standby",
                "streams": len(consumer.streams),
                "events_processed": consumer.processed,
                "dispatchers_alive": sum(now - d.alive_at < STALE_AFTER_SECONDS
                                         for d in self.dispatchers),
                "attempts_sent": sum(d.sent for d in self.dispatchers),
            })
        return True, {"redis": redis_state, "delivery": delivery}
