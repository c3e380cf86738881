"""Fan-out of the Redis Streams event log to the API's WebSocket connections.

One thread per API process reads every pool's ``events`` stream and the
system stream with a blocking XREAD and hands each event to the
subscriptions that want it. A subscription first registers (so live events
queue up), then replays what it missed from Redis, then drains its queue,
skipping what the replay already sent: ids are shared by a pool's stream and
each job's stream, so "newer than the last id sent" is exact.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from capability_router.cluster import (
    STREAM_SLICE_MS,
    blocking_socket_timeout,
    is_cluster_client,
    make_client,
    slot_groups,
)
from capability_router.keys import DEFAULT_NAMESPACE, Keys, known_namespaces
from capability_router.registry import SYSTEM_EVENTS_KEY
from emp_tasks.connection import get_client

logger = logging.getLogger(__name__)

#: Seconds between refreshes of the list of pools.
NAMESPACE_REFRESH_SECONDS = 5.0
#: Events a subscription may hold unread before it is dropped as too slow.
SUBSCRIPTION_BACKLOG = 10_000
#: Seconds the reader waits after a read that found events, so the next read (and the
#: sockets' writes) take several at a time rather than one each: at most this much delay.
READ_COALESCE_SECONDS = 0.005
#: Where each API process lists its open sockets (several processes share a port).
CONNECTIONS_KEY = "emp:ws:connections"
#: A process's list expires unless refreshed this often (seconds) by its reader thread.
CONNECTIONS_TTL_SECONDS = 15
#: Hash of each process's socket counts ("<clients> <monitors>"), by process key: the
#: monitors' ``system_stats`` reads counts, not every connection's row.
CONNECTION_COUNTS_KEY = CONNECTIONS_KEY + ":counts"


def id_key(event_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Event:
    """One entry of the event log."""

    id: str
    name: str
    job_id: str | None
    data: dict[str, Any]
    #: Pool of a job event; None for system events (workers, machines).
    namespace: str | None
    #: Encoded messages, by renderer: every monitor sends the same text, encoded once.
    texts: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: The same as WebSocket frames (``session.text_frame``), for sockets that take them.
    frames: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str], namespace: str | None) -> Event:
        try:
            data = json.loads(fields.get("data") or "{}")
        except ValueError:
            data = {"raw": fields.get("data")}
        return cls(entry_id, fields.get("event", ""), fields.get("job_id") or data.get("job_id"),
                   data, namespace)


@dataclass(eq=False)
class Subscription:
    """What one connection wants, and the queue its events wait in."""

    #: Job ids (client connections); ignored when ``everything`` is set.
    jobs: set[str] = field(default_factory=set)
    #: Monitors: every job event; ``system`` adds worker and machine events.
    everything: bool = False
    system: bool = False
    queue: queue.Queue[Event] = field(default_factory=lambda: queue.Queue(SUBSCRIPTION_BACKLOG))
    overflowed: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    #: The process's own reader (not a socket): left out of ``/api/connections``.
    internal: bool = False

    def wants(self, event: Event) -> bool:
        if event.namespace is None:
            return self.system
        return self.everything or event.job_id in self.jobs

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.overflowed = True


class EventHub:
    """The process's single reader of the event log.

    Subscriptions are indexed by job id, so an event costs the connections
    that follow its job, not every open socket (5,000 sockets at 1,300
    events/s was 0.3 s of CPU per second per process when each event looked
    at every subscription); the wide ones (monitors) are kept apart.
    """

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        #: Job id -> the subscriptions following it.
        self._by_job: dict[str, set[Subscription]] = {}
        #: Subscriptions that may want events by kind rather than by job (monitors).
        self._wide: set[Subscription] = set()
        #: Open sockets of this process by kind ("client", "monitor").
        self._open: dict[str, int] = {"client": 0, "monitor": 0}
        self._cursors: dict[str, str] = {}
        self._namespaces_at = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: Cluster: which slot's streams the next blocking read waits on.
        self._turn = 0
        #: When (monotonic) reads of the event log began failing; None while they work.
        #: A stream open before then delivers nothing until they work again (the monitor's
        #: live stream ends then, so its pages say so).
        self.failing_since: float | None = None

    @property
    def client(self) -> redis.Redis:
        return get_client(self.redis_url)

    # -- subscriptions ----------------------------------------------------

    @property
    def _process_key(self) -> str:
        return f"{CONNECTIONS_KEY}:{socket.gethostname()}:{os.getpid()}"

    @staticmethod
    def _row(sub: Subscription) -> str:
        return json.dumps({**sub.info, "subscribed_jobs": len(sub.jobs)})

    def _counts_text(self) -> str:
        return f"{self._open['client']} {self._open['monitor']}"

    def _publish_connections(self) -> None:
        """Write this process's open sockets where every API process can read them (the
        reader thread refreshes the whole list every few seconds)."""
        with self._lock:
            rows = {str(id(s)): self._row(s) for s in self._subscriptions if not s.internal}
            counts = self._counts_text()
        key = self._process_key
        # (On a cluster the keys live in different slots: no MULTI there.)
        with self.client.pipeline(transaction=not is_cluster_client(self.client)) as pipe:
            pipe.delete(key)
            if rows:
                pipe.hset(key, mapping=rows)
                pipe.expire(key, CONNECTIONS_TTL_SECONDS)
                pipe.zadd(CONNECTIONS_KEY, {key: time.time()})
                pipe.hset(CONNECTION_COUNTS_KEY, key, counts)
            else:
                pipe.zrem(CONNECTIONS_KEY, key)
                pipe.hdel(CONNECTION_COUNTS_KEY, key)
            pipe.execute()

    def _publish_change(self, sub: Subscription, opened: bool) -> None:
        """One socket opened or closed: its row and the counts, not the whole list (a
        reconnect storm of thousands of sockets would rewrite it for each)."""
        with self._lock:
            row, counts = (self._row(sub) if opened else None), self._counts_text()
        key = self._process_key
        with self.client.pipeline(transaction=False) as pipe:
            if row is not None:
                pipe.hset(key, str(id(sub)), row)
                pipe.expire(key, CONNECTIONS_TTL_SECONDS)
                pipe.zadd(CONNECTIONS_KEY, {key: time.time()})
            else:
                pipe.hdel(key, str(id(sub)))
            pipe.hset(CONNECTION_COUNTS_KEY, key, counts)
            pipe.execute()

    def subscribe(self, subscription: Subscription, namespaces: Iterable[str] = ()) -> None:
        """Start delivering live events to ``subscription``.

        Events from this moment on are queued; callers replay older ones
        themselves (``replay_job``, ``replay_pools``) and skip duplicates.
        """
        self.track(namespaces or [DEFAULT_NAMESPACE])
        with self._lock:
            if subscription not in self._subscriptions and not subscription.internal:
                self._open[_kind(subscription)] += 1
            self._subscriptions.add(subscription)
            if subscription.everything or subscription.system:
                self._wide.add(subscription)
            for job_id in subscription.jobs:
                self._by_job.setdefault(job_id, set()).add(subscription)
        self._ensure_thread()
        if not subscription.internal:
            self._publish_change(subscription, opened=True)

    def follow(self, subscription: Subscription, job_id: str) -> None:
        """Add a job to a subscription: its events are offered from now on."""
        with self._lock:
            subscription.jobs.add(job_id)
            if subscription in self._subscriptions:
                self._by_job.setdefault(job_id, set()).add(subscription)

    def unfollow(self, subscription: Subscription, job_id: str) -> None:
        """Stop offering a job's events to a subscription (its job ended): a socket that
        submits job after job must not keep an entry per job it ever followed."""
        with self._lock:
            subscription.jobs.discard(job_id)
            followers = self._by_job.get(job_id)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._by_job[job_id]

    def follow_everything(self, subscription: Subscription) -> None:
        """Offer every job event to a subscription (a monitor)."""
        with self._lock:
            subscription.everything = True
            if subscription in self._subscriptions:
                self._wide.add(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions and not subscription.internal:
                self._open[_kind(subscription)] -= 1
            self._subscriptions.discard(subscription)
            self._wide.discard(subscription)
            for job_id in subscription.jobs:
                followers = self._by_job.get(job_id)
                if followers is not None:
                    followers.discard(subscription)
                    if not followers:
                        del self._by_job[job_id]
        if subscription.internal:
            return
        try:
            self._publish_change(subscription, opened=False)
        except redis.RedisError:  # the reader thread's refresh corrects it
            logger.debug("could not update the connection list", exc_info=True)

    def _live_process_keys(self) -> list[str]:
        """The connection lists of API processes that refreshed theirs lately."""
        client = self.client
        client.zremrangebyscore(CONNECTIONS_KEY, "-inf", time.time() - CONNECTIONS_TTL_SECONDS)
        return client.zrange(CONNECTIONS_KEY, 0, -1)

    def connections(self) -> dict[str, list[dict[str, Any]]]:
        """Open WebSocket connections of every API process, for ``GET /api/connections``."""
        client = self.client
        out: dict[str, list[dict[str, Any]]] = {"clients": [], "monitors": []}
        for key in self._live_process_keys():
            for row in client.hvals(key):
                info = json.loads(row)
                out["monitors" if info.get("kind") == "monitor" else "clients"].append(info)
        return out

    def connection_counts(self) -> dict[str, int]:
        """Open WebSockets of every API process by kind, without reading each one's row."""
        client = self.client
        keys = self._live_process_keys()
        stale = set(client.hkeys(CONNECTION_COUNTS_KEY)) - set(keys)  # processes gone
        if stale:
            client.hdel(CONNECTION_COUNTS_KEY, *stale)
        totals = {"clients": 0, "monitors": 0}
        for value in client.hmget(CONNECTION_COUNTS_KEY, keys) if keys else []:
            clients, _, monitors = (value or "0 0").partition(" ")
            totals["clients"] += int(clients)
            totals["monitors"] += int(monitors or 0)
        return totals

    # -- replay -------------------------------------------------------------

    def replay_job(self, namespace: str, job_id: str, after: str | None) -> list[Event]:
        """A job's events newer than ``after`` (all of them when None)."""
        start = f"({after}" if after else "-"
        entries = self.client.xrange(Keys(namespace).job_events(job_id), min=start)
        return [Event.from_entry(i, f, namespace) for i, f in entries]

    def replay_pools(self, after: str, limit: int = 10_000) -> list[Event]:
        """Every pool's events newer than ``after``, oldest first."""
        events: list[Event] = []
        for namespace in self.namespaces():
            entries = self.client.xrange(Keys(namespace).events, min=f"({after}", count=limit)
            events += [Event.from_entry(i, f, namespace) for i, f in entries]
        events.sort(key=lambda e: id_key(e.id))
        return events[:limit]

    def namespaces(self) -> list[str]:
        return known_namespaces(self.client)

    # -- the reader thread ------------------------------------------------

    def track(self, namespaces: Iterable[str]) -> None:
        """Make sure the reader follows these pools from their current end."""
        streams = [Keys(ns).events for ns in namespaces]
        if SYSTEM_EVENTS_KEY not in self._cursors:
            streams.append(SYSTEM_EVENTS_KEY)
        missing = [s for s in streams if s not in self._cursors]
        if not missing:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for stream in missing:
                pipe.xrevrange(stream, count=1)
            tails = pipe.execute()
        with self._lock:
            for stream, tail in zip(missing, tails, strict=True):
                self._cursors.setdefault(stream, tail[0][0] if tail else "0-0")

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="emp-event-hub", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        # A client of its own: a blocking XREAD must not hold a pooled connection others need.
        # Its timeout outlasts the XREAD's BLOCK (1 s) whatever EMP_REDIS_SOCKET_TIMEOUT says
        # (the setting + 5 s; 10 s by default): a read that blocked its full length is no hang.
        reader = make_client(self.redis_url, decode_responses=True,
                             socket_timeout=blocking_socket_timeout(), health_check_interval=30)
        # One line when reads start failing, one when they work again.
        while not self._stopping.is_set():
            try:
                self._read_once(reader)
            except redis.RedisError as exc:
                if self.failing_since is None:
                    logger.warning("event log read failed (%s); retrying every 1 s", exc)
                    self.failing_since = time.monotonic()
                time.sleep(1.0)
            else:
                if self.failing_since is not None:
                    logger.warning("event log readable again")
                self.failing_since = None

    def _read_once(self, reader: redis.Redis) -> None:
        now = time.monotonic()
        if now - self._namespaces_at > NAMESPACE_REFRESH_SECONDS:
            self.track(self.namespaces())
            self._publish_connections()
            self._namespaces_at = now
        with self._lock:
            cursors = dict(self._cursors)
        reply = self._xread(reader, cursors)
        for stream, entries in reply or []:
            namespace = None if stream == SYSTEM_EVENTS_KEY else _namespace_of(stream)
            for entry_id, fields in entries:
                self._dispatch(Event.from_entry(entry_id, fields, namespace))
            with self._lock:
                self._cursors[stream] = entries[-1][0]
        if reply:
            time.sleep(READ_COALESCE_SECONDS)

    def _xread(self, reader: redis.Redis, cursors: dict[str, str]) -> list[Any]:
        """XREAD of every stream; on a cluster, one XREAD per slot.

        There, every slot is read without blocking (one pipeline, a round trip
        per master), and when nothing came the reader blocks on one slot for
        ``STREAM_SLICE_MS``, a different slot each time: an event waits at
        most that long, and an idle API sends a few reads per slice.
        """
        groups = slot_groups(reader, list(cursors))
        if len(groups) <= 1:
            return reader.xread(cursors, block=1000, count=500)
        with reader.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.xread({s: cursors[s] for s in group}, count=500)
            replies = pipe.execute()
        found = [item for reply in replies for item in reply or []]
        if found:
            return found
        group = groups[self._turn % len(groups)]
        self._turn += 1
        return reader.xread({s: cursors[s] for s in group}, block=STREAM_SLICE_MS, count=500)

    def _dispatch(self, event: Event) -> None:
        # Offered under the lock (put_nowait never waits): once ``unfollow`` returns, no
        # event of that job reaches the subscription's queue any more.
        with self._lock:
            subs = [s for s in self._wide if s.wants(event)]
            if event.namespace is not None and event.job_id is not None:
                subs += [s for s in self._by_job.get(event.job_id, ()) if not s.everything]
            for sub in subs:
                sub.offer(event)


def _kind(sub: Subscription) -> str:
    return "monitor" if sub.info.get("kind") == "monitor" else "client"


def _namespace_of(stream: str) -> str:
    return stream[stream.index("{") + 1:stream.index("}")]

