"""Delivery threads: lease a due hook, send its head delivery, record the outcome.

Order: each hook has one FIFO queue and at most one delivery in flight (its
head), so a receiver gets every event in the order of the event log, which
keeps each job's events in order. A dispatcher leases the hook (the ``due``
score moves to the lease expiry, a token fences the result), so two threads
or two service instances never send for the same hook at once; a
dispatcher that dies mid-request loses its lease after ``lease_seconds``
(sooner when its instance restarts under the same name) and the delivery is
sent again: at-least-once, receivers drop repeats by ``webhook-id``.

Outcomes of an attempt:

- 2xx: delivered; the queue moves on; the hook's failure count resets.
- No response (connection refused, timeout, DNS failure), 408, 429 or 5xx:
  transient. The delivery stays at the head and is retried after a backoff;
  transient failures never use up the delivery's attempts. But a receiver
  that answers, and keeps answering 408, 429 or 5xx to the same delivery
  ``give_up_after_ms`` (1 h) after its first attempt, is refusing that one
  (a handler that crashes on it): the delivery is dead-lettered so the
  hook's later deliveries are not held up for ever behind it. A receiver
  that does not answer at all is down, not refusing: waited for without
  limit (the backlog bounds what queues meanwhile).
- Any other status (3xx, other 4xx): counts against the delivery's
  ``max_attempts`` (retried with backoff until then), then the delivery is
  dead-lettered (status ``failed``) and the queue moves on.
- Address refused by the SSRF guard at delivery time: recorded as
  ``refused`` at once, the queue moves on.

Backoff: ``initial_delay_ms * backoff_multiplier ** (attempt - 1)`` capped at
``max_delay_ms`` (per hook ``retry_config``, defaults 1 s, x2, 30 s), with
jitter: the wait is drawn from [0.8 x delay, delay], so hooks failing together
spread out and no wait exceeds the original's schedule. A Retry-After header
on 429/503 lengthens it, up to ``max_delay_ms``.

Every failed attempt, of any kind, counts as a consecutive failure of the
hook; at ``disconnect_after`` (10) the hook is disconnected: nothing is sent
until a probe ``reconnect_seconds`` (300) later, or until
``POST /webhooks/<id>/reconnect``. A delivered probe reconnects it. Events
keep queueing meanwhile, up to ``max_backlog`` per hook; beyond that new
deliveries are dropped and counted.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from typing import Any

import redis

from capability_router.functions import redis_now_ms
from capability_router.outages import UNREACHABLE, OutageLog
from capability_router.redaction import masked_url
from emp_tasks import tracing
from webapp.outage import REFUSING, WriteRefusals
from webapp.webhooks.config import GIVE_UP_AFTER_MS, WebhookConfig
from webapp.webhooks.library import Claim, Outcome, WebhookFunctions
from webapp.webhooks.metrics import WebhookMetrics
from webapp.webhooks.sender import Sender, SendResult
from webapp.webhooks.signing import signature_headers, signing_secrets
from webapp.webhooks.wakeup import Wakeup

logger = logging.getLogger(__name__)
#: Writes Redis refused, logged once a minute for all of this process's dispatchers.
REFUSALS = WriteRefusals("webhook dispatcher")

#: Deliveries of one hook sent back to back before its lease is given up,
#: so a long backlog does not keep a thread from other hooks.
MAX_CHAIN = 100
#: Seconds of sending after which a chain ends anyway: a slow receiver (each answer
#: a second, or a timeout) keeps a thread for one delivery, not 100 of them, while
#: other hooks' deliveries wait (8 slow hooks held a fast one's delivery 7.8 s).
CHAIN_SECONDS = 1.0
#: Longest sleep of an idle dispatcher, seconds (it also wakes when events queue).
IDLE_POLL_SECONDS = 1.0


def is_transient(status: int | None) -> bool:
    """No answer, 408, 429 and 5xx: the receiver may accept the same request later."""
    return status is None or status in (408, 429) or status >= 500


#: Share of a retry delay taken off at random, at most.
JITTER = 0.2


def backoff_ms(attempt: int, retry: dict[str, Any], rng: random.Random | None = None) -> int:
    """The wait before attempt ``attempt + 1``: exponential, capped, jittered down."""
    growth = float(retry["backoff_multiplier"]) ** min(attempt - 1, 64)
    delay = min(float(retry["max_delay_ms"]), float(retry["initial_delay_ms"]) * growth)
    return int(delay * (1 - JITTER * (rng or random).random()))


def decide(result: SendResult, attempt: int, retry: dict[str, Any],
           trying_ms: int = 0) -> tuple[str, int]:
    """(outcome, retry delay ms) of an attempt made ``trying_ms`` after the delivery's
    first; see the module docstring."""
    if result.refused:
        return "refused", 0
    status = result.status
    if status is not None and 200 <= status < 300:
        return "delivered", 0
    if status is not None and is_transient(status) and \
            trying_ms >= int(retry.get("give_up_after_ms") or GIVE_UP_AFTER_MS):
        return "failed", 0
    delay = backoff_ms(attempt, retry)
    if result.retry_after_ms and status in (429, 503):
        delay = max(delay, min(result.retry_after_ms, int(retry["max_delay_ms"])))
    if is_transient(status) or attempt < int(retry["max_attempts"]):
        return "retry", delay
    return "failed", 0


def delivery_headers(hook_id: str, secrets: list[str], delivery_id: str, event_type: str,
                     event_id: str, body: str, attempt: int) -> dict[str, str]:
    """The original's X-Webhook-* headers and, with secrets (``signing_secrets``), both
    signatures: the first secret's, and a Standard Webhooks one of each other."""
    headers = {
        "X-Webhook-Event": event_type, "X-Webhook-ID": hook_id, "X-Event-ID": event_id,
        "X-Webhook-Delivery": delivery_id, "X-Webhook-Attempt": str(attempt),
    }
    if secrets:
        headers.update(signature_headers(secrets[0], delivery_id, body,
                                         previous=tuple(secrets[1:])))
    return headers


def attempt_record(result: SendResult, kind: str, at_ms: int) -> dict[str, Any]:
    """What the deliveries endpoints show of one attempt, made at ``at_ms`` (Redis' clock,
    as the delivery's other times: a webhook host's own clock may be off)."""
    error = result.error or ("" if kind == "delivered" else f"HTTP {result.status}")
    if result.location is not None and not result.error:
        # A bare "HTTP 301" left the receiver's developer guessing: say where it pointed.
        # Its password (a receiver may redirect to a URL with one) shown as hooks' are.
        error += (f" redirecting to {masked_url(result.location)[:300]} (redirects are not "
                  "followed: register the URL that answers)")
    return {
        "timestamp": at_ms, "success": kind == "delivered",
        "outcome": kind, "response_status": result.status, "response_body": result.excerpt,
        "latency_ms": result.latency_ms, "error_message": error or None,
        "address": result.address,
    }


class Dispatcher:
    """One delivery thread's loop.

    :param client: Redis client (``decode_responses=True``).
    :param config: service tunables.
    :param sender: the HTTP sender (shared by all dispatchers).
    :param wake: notified when new deliveries were filed, to cut an idle sleep short.
    :param token_prefix: ``<instance>:<run id>:``, the start of this run's lease tokens.
    :param outage: the service's outage state, shared with its other threads (default:
        the dispatcher's own).
    :param metrics: the service's metrics, told of every attempt (None: not counted).
    """

    def __init__(self, client: redis.Redis, config: WebhookConfig, sender: Sender,
                 wake: Wakeup, token_prefix: str, outage: OutageLog | None = None,
                 metrics: WebhookMetrics | None = None) -> None:
        self.functions = WebhookFunctions(client)
        self.outage = outage or OutageLog(
            logger, "webhook dispatcher: Redis unreachable (%s); retrying every second",
            "webhook dispatcher: Redis reachable again")
        self.config = config
        self.sender = sender
        self.wake = wake
        self.token_prefix = token_prefix
        self.metrics = metrics
        self.alive_at = 0.0
        self.sent = 0

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; Redis errors are logged and retried (an outage
        once, ``self.outage``)."""
        lease_ms = int(self.config.lease_seconds * 1000)
        while not stop.is_set():
            self.alive_at = time.monotonic()
            try:
                claim = self.functions.claim(lease_ms, self.token_prefix + uuid.uuid4().hex[:12])
                self.outage.succeeded()
                if isinstance(claim, int):
                    wait = IDLE_POLL_SECONDS if claim < 0 else min(claim / 1000, IDLE_POLL_SECONDS)
                    self.wake.wait(wait)
                    continue
                self.work(claim)
            except UNREACHABLE as exc:
                self.outage.failed(exc)
                stop.wait(1.0)
            except tuple(REFUSING) as exc:  # full or read-only: a traceback a second helps no one
                REFUSALS.note(exc, "retrying every second")
                stop.wait(1.0)
            except Exception:
                logger.exception("webhook dispatcher: unexpected error")
                stop.wait(1.0)

    def work(self, claim: Claim) -> None:
        """Send the claimed hook's due deliveries, one after another."""
        config = self.config
        began = time.monotonic()
        for sent in range(MAX_CHAIN):
            outcome = self.attempt(claim)
            if self.metrics is not None:
                self.metrics.attempted(claim.delivery, outcome)
            last = sent == MAX_CHAIN - 1 or time.monotonic() - began >= CHAIN_SECONDS
            keep = 0 if last else int(config.lease_seconds * 1000)
            following = self.functions.finish(
                claim, outcome, config.disconnect_after, int(config.reconnect_seconds * 1000),
                int(config.history_seconds * 1000), config.recent_max, keep)
            self._log(claim, outcome, following)
            if not isinstance(following, Claim):
                return
            claim = following

    def retry_config(self, hook: dict[str, str]) -> dict[str, Any]:
        """The hook's retry_config over the service defaults."""
        return {**self.config.retry_defaults(), **json.loads(hook.get("retry_config") or "{}")}

    def attempt(self, claim: Claim) -> Outcome:
        """Send the claimed delivery once and judge the answer."""
        hook, delivery = claim.hook, claim.delivery
        if not hook or hook.get("active") == "0":
            return Outcome("park")
        if not delivery.get("body"):
            return Outcome("skip")
        number = int(delivery.get("attempts") or 0) + 1
        body = delivery["body"]
        secrets = signing_secrets(hook, claim.now_ms)  # Redis' clock, as the overlap's end
        headers = delivery_headers(claim.hook_id, secrets, claim.delivery_id,
                                   delivery.get("event_type", ""), delivery.get("event_id", ""),
                                   body, number)
        with tracing.span("webhook delivery", delivery.get("job_id") or None, {
                "emp.webhook_id": claim.hook_id, "emp.delivery_id": claim.delivery_id,
                "emp.event_type": delivery.get("event_type", ""), "emp.delivery_attempt": number,
        }) as span:
            result = self.sender.post(hook["url"], body.encode(), headers)
            first = int(delivery.get("first_attempt_at") or 0)
            trying_ms = 0
            if first and is_transient(result.status):  # first_attempt_at is Redis' clock
                trying_ms = max(0, redis_now_ms(self.functions.client) - first)
            retry = self.retry_config(hook)
            kind, delay = decide(result, number, retry, trying_ms)
            if span is not None:
                span.set_attribute("http.response.status_code", result.status or 0)
                span.set_attribute("emp.outcome", kind)
        self.sent += 1
        record = attempt_record(result, kind, claim.now_ms)  # sent at once on its claim
        if kind == "failed" and is_transient(result.status):
            record["error_message"] += (
                f"; gave up: the receiver answered this delivery {result.status} or another "
                f"transient status for {trying_ms // 1000} s after its first attempt "
                f"(retry_config.give_up_after_ms {int(retry['give_up_after_ms'])})")
        return Outcome(kind, delay, record, result.status, record["error_message"] or "")

    def _log(self, claim: Claim, outcome: Outcome, following: Claim | str) -> None:
        if outcome.kind in ("failed", "refused"):
            logger.warning("webhook %s: delivery %s %s after %s attempt(s): %s",
                           claim.hook_id, claim.delivery_id, outcome.kind,
                           int(claim.delivery.get("attempts") or 0) + 1, outcome.error)
        elif outcome.kind == "retry":
            logger.info("webhook %s: delivery %s will be retried in %d ms: %s",
                        claim.hook_id, claim.delivery_id, outcome.delay_ms, outcome.error)
        if following == "stale":
            logger.warning("webhook %s: lease lost while sending %s (another instance has it)",
                           claim.hook_id, claim.delivery_id)
