"""Reads the event log with a consumer group and files a delivery per matching hook.

Streams: every pool's ``emp:{<pool>}:events`` (pools from ``emp:namespaces``
plus ``default``, refreshed every few seconds) and ``emp:system:events``.
Each gets the consumer group ``emp-webhooks``, created (MKSTREAM) at the
earliest of "now" and the oldest hook's creation time: a stream the service
first sees late (a new pool, a first start) is still read from the moment a
hook could want its events, and nothing older is replayed. A hook receives
only events appended after it was registered.

One consumer at a time: with several service instances, only the one
holding the consumer role (a renewed Redis lease, ``consumer_lease_seconds``)
reads the log, so every hook's queue is filed in log order; the others stand
by and only dispatch. An instance restarted under the same name takes the
role back at once.

At-least-once: a batch's deliveries are stored (one idempotent function call
each, ids derived from hook id and event id) before its entries are
acknowledged. Entries read but not acknowledged (a crash in between) are
read again, in log order and before any new entry: on start (XREADGROUP
from id 0 under the same consumer name), and from a previous consumer's
pending list when the role changes hands (XAUTOCLAIM of entries idle for
half the role's lease) or after ``claim_idle_seconds``. Storing them again
is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from capability_router.cluster import STREAM_SLICE_MS, block_ms, slot_groups
from capability_router.functions import redis_now_ms
from capability_router.keys import Keys, known_namespaces
from capability_router.outages import UNREACHABLE, OutageLog
from capability_router.registry import SYSTEM_EVENTS_KEY
from webapp.outage import REFUSING, WriteRefusals
from webapp.webhooks import keys
from webapp.webhooks.config import GROUP, WebhookConfig
from webapp.webhooks.enrich import Enricher
from webapp.webhooks.events import PROGRESS_EVENT, Event, entry_ms
from webapp.webhooks.filters import matches
from webapp.webhooks.library import WebhookFunctions
from webapp.webhooks.metrics import WebhookMetrics

logger = logging.getLogger(__name__)
#: Writes Redis refused, logged once a minute for all of this process's consumers.
REFUSALS = WriteRefusals("webhook consumer")

#: Entries read per call.
BATCH = 200
#: Longest block of a read, ms (also how often the loop looks at its clocks): 1 s, less
#: when the shared client's ``EMP_REDIS_SOCKET_TIMEOUT`` is under 2 s, which a 1 s block
#: would hit on every idle read (each then logged as an outage).
BLOCK_MS = block_ms(1000)
#: Seconds between attempts of a standing-by instance to become the consumer.
STANDBY_POLL_SECONDS = 1.0
#: Seconds the consumer waits after a read that found entries, so the next read
#: takes several (one filing and one acknowledgement per batch, not per event).
READ_COALESCE_SECONDS = 0.005
#: A consumer of the group with nothing pending and idle this long is removed
#: (an instance that was renamed or is gone for good), ms.
FORGET_CONSUMER_MS = 24 * 3600 * 1000


def delivery_id(hook_id: str, event_id: str) -> str:
    """The id of the delivery of one event to one hook: the same every time."""
    return "dlv_" + hashlib.sha256(f"{hook_id}|{event_id}".encode()).hexdigest()[:32]


def payload(hook_id: str, event: Event, data: dict[str, Any]) -> str:
    """The request body sent to a hook, as compact JSON text."""
    return json.dumps({
        "event_type": event.name, "event_id": event.event_id, "timestamp": event.timestamp,
        "webhook_id": hook_id, "data": data,
    }, separators=(",", ":"), default=str)


@dataclass
class Subscriber:
    """What the consumer needs of a registration."""

    id: str
    events: frozenset[str]
    filters: dict[str, Any]
    created_at: int


@dataclass
class _Hooks:
    #: The registrations' version when loaded (None: not loaded yet).
    version: str | None = None
    by_event: dict[str, list[Subscriber]] = field(default_factory=dict)
    oldest: int | None = None


def load_subscribers(client: redis.Redis) -> list[Subscriber]:
    """Active registrations."""
    ids = client.zrange(keys.HOOKS, 0, -1)
    if not ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for hook_id in ids:
            pipe.hmget(keys.hook(hook_id), "events", "filters", "active", "created_at")
        rows = pipe.execute()
    out = []
    for hook_id, (events, filters, active, created) in zip(ids, rows, strict=True):
        if events is None or active == "0":
            continue
        out.append(Subscriber(hook_id, frozenset(json.loads(events)),
                              json.loads(filters or "{}"), int(created or 0)))
    return out


class EventConsumer:
    """One consumer of the group; run ``run(stop)`` in a thread.

    :param client: Redis client (``decode_responses=True``).
    :param config: service tunables (consumer name, batch limits, throttling).
    :param on_queued: called after a batch filed at least one delivery, with the
        number of hooks that got one (so that many dispatchers wake).
    :param run_id: this run's id; with the instance name it marks the consumer role.
    :param outage: the service's outage state, shared with its other threads (default:
        the consumer's own).
    :param metrics: the service's metrics, told what each batch filed (None: not counted).
    """

    def __init__(self, client: redis.Redis, config: WebhookConfig,
                 on_queued: Callable[[int], None] = lambda hooks: None,
                 run_id: str = "0", outage: OutageLog | None = None,
                 metrics: WebhookMetrics | None = None) -> None:
        self.client = client
        self.outage = outage or OutageLog(
            logger, "webhook consumer: Redis unreachable (%s); retrying every second",
            "webhook consumer: Redis reachable again")
        self.config = config
        self.functions = WebhookFunctions(client)
        self.enricher = Enricher(client)
        self.on_queued = on_queued
        self.metrics = metrics
        self.consumer = config.instance
        self.token = f"{config.instance}:{run_id}"
        self.leading = False
        #: stream key -> pool (None: the system stream)
        self.streams: dict[str, str | None] = {}
        self.hooks = _Hooks()
        self.alive_at = 0.0
        self.processed = 0
        self._next_refresh = 0.0
        self._next_autoclaim = 0.0
        self._take_over_idle_ms: int | None = None
        self._read_pending = True
        #: The last read found entries: the next waits a little so more gather.
        self._read_entries = False
        #: Cluster: which slot's streams the next blocking read waits on.
        self._turn = 0

    # -- streams and groups -------------------------------------------------

    def _start_id(self) -> str:
        """Where a new group starts: now, or the oldest hook's creation if earlier.

        A group delivers ids *after* its start, so it starts just before that
        millisecond: an event of the very millisecond a hook was created counts
        (per-hook filtering by event time drops anything older).
        """
        now = redis_now_ms(self.client)
        oldest = self.hooks.oldest
        start = min(now, oldest) if oldest else now
        return f"{start - 1}-18446744073709551615"

    def refresh_streams(self) -> None:
        """Find new pools and give each new stream the consumer group."""
        self.reload_hooks()
        namespaces = known_namespaces(self.client)
        wanted: dict[str, str | None] = {SYSTEM_EVENTS_KEY: None}
        for namespace in sorted(namespaces):
            try:
                wanted[Keys(namespace).events] = namespace
            except ValueError:
                continue
        for stream in wanted:
            if stream not in self.streams:
                self._create_group(stream)
        self.streams = wanted

    def _create_group(self, stream: str) -> None:
        try:
            self.client.xgroup_create(stream, GROUP, id=self._start_id(), mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- hooks --------------------------------------------------------------

    def reload_hooks(self) -> None:
        """Reload registrations when their version changed."""
        version = self.client.get(keys.VERSION) or "0"
        if version == self.hooks.version:
            return
        subscribers = load_subscribers(self.client)
        by_event: dict[str, list[Subscriber]] = {}
        for sub in subscribers:
            for name in sub.events:
                by_event.setdefault(name, []).append(sub)
        oldest = min((s.created_at for s in subscribers), default=None)
        self.hooks = _Hooks(version, by_event, oldest)

    # -- reading ------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; Redis errors are logged and retried (an outage
        once, ``self.outage``)."""
        while not stop.is_set():
            try:
                stepped = self.step()
                self.outage.succeeded()
                if not stepped:
                    stop.wait(STANDBY_POLL_SECONDS)
                elif self._read_entries:
                    stop.wait(READ_COALESCE_SECONDS)
            except tuple(REFUSING) as exc:  # full or read-only: no traceback a second
                REFUSALS.note(exc, "retrying every second")
                self._read_pending = True
                stop.wait(1.0)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self.streams = {}
                    self._next_refresh = 0.0
                    continue
                logger.exception("webhook consumer: Redis error")
                self._read_pending = True
                stop.wait(1.0)
            except UNREACHABLE as exc:
                self.outage.failed(exc)
                self._read_pending = True
                stop.wait(1.0)
            except Exception:
                logger.exception("webhook consumer: unexpected error")
                self._read_pending = True
                stop.wait(1.0)
        if self.leading:
            self.functions.unlead(self.token)

    def step(self) -> bool:
        """One round; False when another instance consumes (this one stands by).

        The consuming instance renews its role, refreshes the streams, takes
        over what a previous consumer left pending (when it just became the
        consumer, and every ``claim_idle_seconds``), re-reads its own pending
        entries after an error, then reads new entries.
        """
        now = time.monotonic()
        self.alive_at = now
        role = self.functions.lead(self.token, int(self.config.consumer_lease_seconds * 1000),
                                   f"{self.consumer}:")
        if role == 0:
            if self.leading:
                logger.warning("webhook consumer: another instance consumes the event log now")
            self.leading = False
            return False
        if role == 2 or not self.leading:
            logger.info("webhook consumer: %s consumes the event log", self.token)
            self.leading = True
            self._next_refresh = 0.0
            self._take_over_idle_ms = int(self.config.consumer_lease_seconds * 500)
        if now >= self._next_refresh or not self.streams:
            self.refresh_streams()
            self._next_refresh = now + self.config.namespace_refresh_seconds
        if self._take_over_idle_ms is not None:
            self.take_over(self._take_over_idle_ms)
            self._take_over_idle_ms = None
            self._read_pending = True
        elif now >= self._next_autoclaim:
            if self.take_over(int(self.config.claim_idle_seconds * 1000)):
                self._read_pending = True
            self._next_autoclaim = now + max(1.0, self.config.claim_idle_seconds / 2)
        if self._read_pending:
            self.drain_pending()
            self._read_pending = False
        batch = self.read_new()
        self._read_entries = bool(batch)
        self.handle(batch)
        return True

    def read_new(self) -> dict[str, list[tuple[str, dict[str, str] | None]]]:
        """New entries of every stream; on a cluster, one XREADGROUP per slot.

        There, every slot is read without blocking (one pipeline), and when
        nothing came the consumer blocks on one slot for ``STREAM_SLICE_MS``,
        a different slot each time, so an event waits at most that long.
        """
        groups = slot_groups(self.client, list(self.streams))
        if len(groups) <= 1:
            return _entries_of(self.client.xreadgroup(
                GROUP, self.consumer, {s: ">" for s in self.streams}, count=BATCH,
                block=BLOCK_MS))
        batch: dict[str, list[tuple[str, dict[str, str] | None]]] = {}
        with self.client.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.xreadgroup(GROUP, self.consumer, {s: ">" for s in group}, count=BATCH)
            for reply in pipe.execute():
                batch.update(_entries_of(reply))
        if batch:
            return batch
        group = groups[self._turn % len(groups)]
        self._turn += 1
        return _entries_of(self.client.xreadgroup(
            GROUP, self.consumer, {s: ">" for s in group}, count=BATCH, block=STREAM_SLICE_MS))

    def drain_pending(self) -> None:
        """Process, in log order, what this consumer read but did not acknowledge."""
        for stream in list(self.streams):
            last = "0"
            while True:
                reply = self.client.xreadgroup(GROUP, self.consumer, {stream: last}, count=BATCH)
                batch = _entries_of(reply)
                entries = batch.get(stream) or []
                if not entries:
                    break
                self.handle({stream: entries})
                last = entries[-1][0]

    def take_over(self, min_idle_ms: int) -> int:
        """Move into this consumer's pending list the entries other consumers left
        unacknowledged for ``min_idle_ms`` (processed next, in log order by
        ``drain_pending``); forget consumers long gone. Returns how many moved."""
        moved = 0
        for stream in list(self.streams):
            start = "0-0"
            while True:
                # (not JUSTID: redis-py then drops the cursor needed to go on)
                reply = self.client.xautoclaim(stream, GROUP, self.consumer, min_idle_ms,
                                               start_id=start, count=BATCH)
                start, claimed = reply[0], reply[1]
                moved += len(claimed)
                if start in ("0-0", b"0-0"):
                    break
            for info in self.client.xinfo_consumers(stream, GROUP):
                if info["name"] != self.consumer and not info["pending"] and \
                        info["idle"] > FORGET_CONSUMER_MS:
                    self.client.xgroup_delconsumer(stream, GROUP, info["name"])
        return moved

    # -- filing -------------------------------------------------------------

    def handle(self, batch: dict[str, list[tuple[str, dict[str, str] | None]]]) -> int:
        """File deliveries for a batch of entries, then acknowledge them; how many filed."""
        if not batch:
            return 0
        self.reload_hooks()
        hook_ids: list[str] = []
        calls = []
        for stream, entries in batch.items():
            namespace = self.streams.get(stream)
            events = [Event.from_entry(entry_id, fields, namespace)
                      for entry_id, fields in entries if fields]
            if self.hooks.by_event:
                self.enricher.prefetch(events)
            for event in events:
                for hook_id, call in self._calls_for(event):
                    hook_ids.append(hook_id)
                    calls.append(call)
        replies = self.functions.enqueue_many(calls)
        with self.client.pipeline(transaction=False) as pipe:
            for stream, entries in batch.items():
                pipe.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
            pipe.execute()
        self.processed += sum(len(entries) for entries in batch.values())
        if self.metrics is not None:
            self.metrics.filed_results(replies)
        queued = [hook_id for hook_id, reply in zip(hook_ids, replies, strict=True)
                  if reply == "queued"]
        if queued:
            self.on_queued(len(set(queued)))
        return len(queued)

    def _calls_for(self, event: Event) -> list[tuple[str, tuple[list[str], list[Any]]]]:
        """(hook id, enqueue call) of each delivery the event makes."""
        subscribers = self.hooks.by_event.get(event.name)
        if not subscribers:
            if self.hooks.by_event and event.namespace is not None:
                self.enricher.enrich(event)  # keep the job's worker and machine current
            return []
        data = self.enricher.enrich(event)
        at = entry_ms(event.entry_id)
        throttle = self.config.progress_interval_ms if event.name == PROGRESS_EVENT else 0
        calls = []
        for sub in subscribers:
            if at < sub.created_at or not matches(sub.filters, data):
                continue
            calls.append((sub.id, WebhookFunctions.enqueue_call(
                delivery_id(sub.id, event.event_id), sub.id, event.event_id, event.name,
                event.job_id, event.timestamp, payload(sub.id, event, data), throttle,
                self.config.max_backlog, self.config.history_per_hook, self.config.recent_max)))
        return calls


def _entries_of(reply: Any) -> dict[str, list[tuple[str, dict[str, str] | None]]]:
    """XREADGROUP's reply (RESP2 list or RESP3 dict) as stream -> entries."""
    if not reply:
        return {}
    items = reply.items() if isinstance(reply, dict) else reply
    return {stream: [(entry_id, fields) for entry_id, fields in entries]
            for stream, entries in items if entries}
