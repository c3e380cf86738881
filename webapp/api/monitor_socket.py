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
#: Largest ``finishedJobsPagination.page`` (``pageSize`` is capped at 200).
MAX_PAGE = 10**9


class BadPaging(ValueError):
    """A ``finishedJobsPagination`` field that is no page; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


def _paging(paging: Any) -> tuple[int, int]:
    """(page, page size) of a ``request_full_state``; BadPaging naming the field. A page
    past MAX_PAGE is refused: its offset would overflow Redis's 64-bit integers."""
    if not isinstance(paging, dict):
        raise BadPaging("finishedJobsPagination", "must be an object")
    values = []
    for name, default in (("page", 1), ("pageSize", 50)):
        field = f"finishedJobsPagination.{name}"
        try:
            values.append(int(paging.get(name, default)))
        except (TypeError, ValueError, OverflowError):
            raise BadPaging(field, "must be an integer") from None
    if values[0] > MAX_PAGE:
        raise BadPaging("finishedJobsPagination.page", f"must be at most {MAX_PAGE}")
    return max(1, values[0]), min(200, max(1, values[1]))


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
            if not isinstance(topics, list) or not all(
                    isinstance(topic, str) and topic in TOPICS for topic in topics):
                self.session.send(error_message(
                    f"topics must be a list drawn from {sorted(TOPICS)}", field="topics"))
                return
            self.topics = set(topics)
            self.session.sub.everything = "jobs" in self.topics
            self.session.sub.system = bool({"workers", "machines"} & self.topics)
            self.session.send({"type": "subscribed", "topics": sorted(self.topics)})
        elif kind == "request_full_state":
            try:
                page, size = _paging(message.get("finishedJobsPagination") or {})
            except BadPaging as exc:
                self.session.send(error_message(str(exc), field=exc.field))
                return
            self.session.send({"type": "full_state_snapshot",
                               "timestamp": int(time.time() * 1000),
                               **full_state(self.backend, self.hub, page, size)})
        else:
            self.session.send(error_message(f"unknown message type {kind!r}"))
