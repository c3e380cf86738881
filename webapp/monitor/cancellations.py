"""Show a job cancelled before it ran (or between attempts) as REVOKED on Flower's pages.

Celery sends ``task-revoked`` only from a worker that holds the task; a job
cancelled while pending or waiting for its retry is held by none, so
Flower's in-memory state would keep PENDING or RETRY forever although the
result backend says REVOKED. This feed reads ``job_cancelled`` from the
event log (the monitor's ``EventHub``) and applies it to Flower's state on
its IOLoop, the only thread that may touch that state.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import redis
from celery import states
from tornado.ioloop import IOLoop

from webapp.api.events import Event, EventHub, Subscription, id_key

logger = logging.getLogger(__name__)


#: States in which no worker holds the task; from the others a worker reports the end itself.
UNHELD = frozenset({states.PENDING, states.RETRY})


def mark_revoked(events_state: Any, job_id: str, timestamp: float) -> bool:
    """Turn a known task no worker holds REVOKED in Flower's state; True when it changed."""
    task = events_state.tasks.get(job_id)
    if task is None or task.state not in UNHELD:
        return False
    task.event("revoked", timestamp, timestamp, {})
    index = getattr(events_state, "_index_task", None)
    if index is not None:  # Flower's search index keys on the state too
        index(task, None)
    return True


class CancellationFeed:
    """A daemon thread from the hub's ``job_cancelled`` events to Flower's state."""

    def __init__(self, hub: EventHub, events_state: Any, io_loop: IOLoop) -> None:
        self.hub = hub
        self.events_state = events_state
        self.io_loop = io_loop
        self.subscription = Subscription(everything=True, internal=True)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emp-flower-cancellations",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.hub.unsubscribe(self.subscription)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.hub.subscribe(self.subscription, self.hub.namespaces())
                break
            except redis.RedisError:  # Redis not up yet: the monitor starts anyway
                self._stopping.wait(2.0)
        while not self._stopping.is_set():
            try:
                event = self.subscription.queue.get(timeout=1.0)
            except queue.Empty:
                continue
            self._apply(event)

    def _apply(self, event: Event) -> None:
        if event.name != "job_cancelled" or not event.job_id:
            return
        timestamp = id_key(event.id)[0] / 1000.0
        self.io_loop.add_callback(mark_revoked, self.events_state, event.job_id, timestamp)
