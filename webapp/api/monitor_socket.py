"""``/ws/monitor/<monitor_id>``: the operators' live feed.

Messages in: ``subscribe {topics}`` (workers, machines, jobs, system_stats,
heartbeat; all of them until the first subscribe) and ``request_full_state
{finishedJobsPagination {page, pageSize}}``. Out: ``full_state_snapshot``,
then every job event of every pool and the worker/machine events, plus
``system_stats`` and ``heartbeat`` every few seconds. ``?last_event_id=``
on connect sends the job events missed since then first.
"""

from __future__ import annotations

import time
from typing import Any

from simple_websocket import ConnectionClosed

from webapp.api.events import EventHub, Subscription
from webapp.api.messages import error_message, monitor_message, parse_message
from webapp.api.resume import BadResumeId, parse_resume_id
from webapp.api.session import Session, refuse
from webapp.api.snapshot import full_state, shared_system_stats
from webapp.backend import Backend

TOPICS = frozenset({"workers", "machines", "jobs", "system_stats", "heartbeat"})
#: Seconds between ``system_stats`` / ``heartbeat`` messages.
TICK_SECONDS = 5.0


class MonitorConnection:
    """One monitor's socket."""

    def __init__(self, ws: Any, monitor_id: str, backend: Backend, hub: EventHub) -> None:
        self.ws, self.monitor_id, self.backend, self.hub = ws, monitor_id, backend, hub
        self.topics = set(TOPICS)
        sub = Subscription(system=True, info={"monitor_id": monitor_id, "kind": "monitor",
                                              "connected_at": int(time.time() * 1000)})
        self.session = Session(ws, hub, sub, monitor_message, shared="monitor")

    def run(self, last_event_id: str | None) -> None:
        try:
            last_event_id = parse_resume_id(last_event_id)
        except BadResumeId as exc:
            refuse(self.ws, exc)
            return
        self.session.start()
        self.session.follow_all(last_event_id)
        self.session.send({"type": "connection_established", "monitor_id": self.monitor_id,
                           "timestamp": int(time.time() * 1000)})
        next_tick = time.monotonic() + TICK_SECONDS
        try:
            while not self.session.closed:
                text = self.ws.receive(timeout=max(0.0, next_tick - time.monotonic()))
                if text is not None:
                    self.handle(text)
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + TICK_SECONDS
        except ConnectionClosed:
            pass
        finally:
            self.session.close()

    def tick(self) -> None:
        now = int(time.time() * 1000)
        if "system_stats" in self.topics:
            self.session.send({"type": "system_stats", "timestamp": now,
                               **shared_system_stats(self.backend, self.hub)})
        if "heartbeat" in self.topics:
            self.session.send({"type": "heartbeat", "timestamp": now})

    def handle(self, text: str | bytes) -> None:
        try:
            message = parse_message(text)
        except ValueError as exc:
            self.session.send(error_message(f"invalid message: {exc}"))
            return
        kind = message.get("type")
        if kind == "subscribe":
            topics = message.get("topics")
            if not isinstance(topics, list) or not set(topics) <= TOPICS:
                self.session.send(error_message(
                    f"topics must be a list drawn from {sorted(TOPICS)}"))
                return
            self.topics = set(topics)
            self.session.sub.everything = "jobs" in self.topics
            self.session.sub.system = bool({"workers", "machines"} & self.topics)
            self.session.send({"type": "subscribed", "topics": sorted(self.topics)})
        elif kind == "request_full_state":
            paging = message.get("finishedJobsPagination") or {}
            try:
                page = max(1, int(paging.get("page", 1)))
                size = min(200, max(1, int(paging.get("pageSize", 50))))
            except (TypeError, ValueError, AttributeError):
                self.session.send(error_message("finishedJobsPagination: page and pageSize "
                                                "must be integers"))
                return
            self.session.send({"type": "full_state_snapshot",
                               "timestamp": int(time.time() * 1000),
                               **full_state(self.backend, self.hub, page, size)})
        else:
            self.session.send(error_message(f"unknown message type {kind!r}"))
