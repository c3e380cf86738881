"""A worker follows its pools' placement directives while it is idle.

The hook is the pool process that runs jobs: it holds the connector whose
model cache a directive changes (``get_connector``), so a thread there reads
the directive streams (``capability_router.prediction.directives``) and
acts between jobs. The claim path is untouched: the claiming process never
waits on a directive. Started on Celery's ``worker_process_init`` in the
first pool process only (one connector acts per worker), and only when the
worker's connector (``EMP_CONNECTOR``) acts on directives and
``EMP_DIRECTIVES`` is not ``off``; a ``solo`` pool sends no such signal and
follows none.

What it acts on: directives addressed to this worker, and ``*`` ones it is
the first to take (idle workers only). A directive that arrives while a
job runs waits (at most ``PENDING_MAX``) until the job ends, unless it has
expired by then: judged on Redis' clock, which the leader wrote its expiry
on (one TIME call per directive considered, on this thread, never on a
job's path). After acting, the connector's residency goes to Redis
(``emp_residency``, so ``warm:<model>`` changes) and a ``placement_done``
event, stamped on Redis' clock too, says what happened. Reading starts at
the newest directive at start: one issued while the worker was down is
stale anyway.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from capability_router.cluster import block_ms
from capability_router.functions import redis_now_ms
from capability_router.keys import Keys
from capability_router.prediction.directives import (
    ANY_WORKER,
    DONE_EVENT,
    Directive,
    emit_pool_event,
    last_id,
    take,
)
from emp_tasks import defaults
from emp_tasks.connection import get_client
from emp_tasks.residency_report import send_residency, worker_identity
from machine.connectors.base import Connector, DirectiveOutcome
from machine.connectors.factory import configured_kind, connector_class, get_connector

logger = logging.getLogger("emp.worker")

#: Directives kept waiting for a running job to end.
PENDING_MAX = 100
#: Milliseconds a read of the directive stream blocks: 1 s, less when the shared client's
#: socket timeout (``EMP_REDIS_SOCKET_TIMEOUT``) is under 2 s, which a 1 s BLOCK would hit.
BLOCK_MS = block_ms(1000)

_running = 0
_running_lock = threading.Lock()


@contextmanager
def job_running() -> Iterator[None]:
    """Mark a job as running in this process (directives wait for it to end)."""
    global _running
    with _running_lock:
        _running += 1
    try:
        yield
    finally:
        with _running_lock:
            _running -= 1


def busy() -> bool:
    return _running > 0


class DirectiveFollower:
    """Reads a worker's pools' directive streams and acts on them with its connector.

    :param client: a redis-py client (``decode_responses=True``).
    :param connector: a callable returning the process's connector (built on first use).
    :param worker_id: the worker. :param signature: its profile signature.
    :param pools: the pools it serves.
    """

    def __init__(self, client: Any, connector: Any, worker_id: str, signature: str,
                 pools: list[str]) -> None:
        self.client, self.connector = client, connector
        self.worker_id, self.signature, self.pools = worker_id, signature, list(pools)
        self.cursors = {Keys(pool).directives: last_id(client, pool) for pool in self.pools}
        self.pending: deque[Directive] = deque(maxlen=PENDING_MAX)
        #: What was done, newest last (tests and logs): (directive, outcome).
        self.done: deque[tuple[Directive, DirectiveOutcome]] = deque(maxlen=100)

    def read(self, block_ms: int = BLOCK_MS) -> list[Directive]:
        """New directives this worker may act on (one blocking read with a single pool)."""
        streams = list(self.cursors)
        if len(streams) == 1:
            replies = [self.client.xread({streams[0]: self.cursors[streams[0]]}, count=100,
                                         block=block_ms)]
        else:  # pools live in different cluster slots: one stream per read
            with self.client.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xread({stream: self.cursors[stream]}, count=100)
                replies = pipe.execute()
        found = []
        for reply in replies:
            for stream, entries in reply or []:
                pool = stream.split("{", 1)[1].split("}", 1)[0]
                for entry_id, fields in entries:
                    self.cursors[stream] = entry_id
                    try:
                        directive = Directive.from_entry(entry_id, fields, pool)
                    except ValueError as exc:
                        logger.warning("ignoring a bad placement directive: %s", exc)
                        continue
                    if directive.for_worker(self.worker_id):
                        found.append(directive)
        return found

    def step(self, block_ms: int = BLOCK_MS) -> int:
        """Read, then act on what is due while no job runs; returns directives acted on."""
        self.pending.extend(self.read(block_ms))
        acted = 0
        while self.pending and not busy():
            directive = self.pending.popleft()
            if directive.expires_ms and directive.expired(redis_now_ms(self.client)):
                continue
            if not take(self.client, directive, self.worker_id):
                continue  # another idle worker took this "any" directive
            self.act(directive)
            acted += 1
        return acted

    def act(self, directive: Directive) -> DirectiveOutcome:
        """Have the connector act, then report residency and a ``placement_done`` event."""
        connector: Connector = self.connector()
        try:
            outcome = connector.apply_directive(directive)
        except Exception as exc:  # a failed preload must not stop the thread
            outcome = DirectiveOutcome(False, f"{type(exc).__name__}: {exc}")
        changes = {}
        if outcome.applied:
            changes = send_residency(self.client, self.worker_id, self.pools, self.signature,
                                     connector.residency())
        emit_pool_event(self.client, directive.pool, DONE_EVENT, {
            "directive_id": directive.id, "action": directive.action, "model": directive.model,
            "worker_id": self.worker_id, "applied": outcome.applied, "detail": outcome.detail,
            "seconds": round(outcome.seconds, 3), "any_worker": directive.worker == ANY_WORKER,
            "residency_changes": changes})
        self.done.append((directive, outcome))
        logger.info("placement directive %s %s: %s", directive.action, directive.model,
                    outcome.detail)
        return outcome

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.step() == 0 and len(self.cursors) > 1:
                    stop.wait(BLOCK_MS / 1000)
            except Exception:  # Redis away: try again shortly
                logger.warning("placement directives: read failed", exc_info=True)
                stop.wait(1.0)


def start_follower(app: Celery) -> threading.Thread | None:
    """Start this process's follower thread when its connector acts on directives."""
    if not defaults.directives_on():
        return None
    kind = configured_kind()
    if kind is None or not connector_class(kind).acts_on_directives:
        return None
    worker_id, signature, pools = worker_identity(app)
    if not worker_id or not pools:
        return None
    service = connector_class(kind).service
    follower = DirectiveFollower(get_client(app.conf.broker_url),
                                 lambda: get_connector(service), worker_id, signature, pools)
    thread = threading.Thread(target=follower.run, args=(threading.Event(),),
                              name="emp-directives", daemon=True)
    thread.start()
    return thread


#: Apps built in this process; the one a worker runs has a worker profile in its options.
_apps: weakref.WeakSet[Celery] = weakref.WeakSet()


def _on_process_init(**_: Any) -> None:
    """``worker_process_init``: the first pool process of a worker follows directives."""
    try:
        from billiard.process import current_process

        if getattr(current_process(), "index", 0) not in (0, None):
            return
        for app in _apps:
            if worker_identity(app)[0]:
                start_follower(app)
                return
    except Exception:  # noqa: BLE001 - directives only steer placement
        logger.warning("could not start following placement directives (pid %d)",
                       os.getpid(), exc_info=True)


def init_app(app: Celery) -> None:
    """Have the app's workers follow placement directives (registers once per process)."""
    _apps.add(app)
    worker_process_init.connect(_on_process_init, weak=False, dispatch_uid="emp-directives")
