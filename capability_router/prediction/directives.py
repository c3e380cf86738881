"""Placement directives: "preload model X", "evict model Y", "keep X warm for pool Z".

The intelligence leader decides; a machine's worker acts (``emp_tasks.directives``).
They meet in one Redis stream per pool, ``emp:{<pool>}:directives``, trimmed
to ``DIRECTIVES_MAXLEN`` entries (approximate MAXLEN). A directive names one
worker, or ``*`` for any idle worker of the pool (the first to take it, with
a SET NX on ``directive-taken:<id>``, acts). Each directive is also a
``placement_directive`` event in the pool's event log, with its reason, so
the monitor and webhooks see what the leader asked and why; a worker that
acted or declined appends ``placement_done``.

Stream entry fields (all strings): ``action`` (preload, evict, keep),
``model``, ``worker`` (id or ``*``), ``reason``, ``for_pool`` (the pool the
model is for when it is another: cross-pool), ``make_room_from`` (comma
list of models to evict first if room is needed), ``issued_ms``,
``expires_ms`` (a directive read later is stale and ignored).

Every time here is Redis' clock (``redis_now_ms``): a directive's expiry is
written by the leader's host and judged on a worker's, and the events sit
beside job events stamped by the queue's functions; either host's clock may
be minutes off.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from capability_router.functions import redis_now_ms
from capability_router.keys import NAMESPACES_KEY, Keys

#: What a directive asks.
PRELOAD, EVICT, KEEP = "preload", "evict", "keep"
ACTIONS = (PRELOAD, EVICT, KEEP)
#: ``worker`` of a directive any idle worker of the pool may take.
ANY_WORKER = "*"
#: Approximate length each pool's directive stream is trimmed to.
DIRECTIVES_MAXLEN = 1000
#: Event names in the pool's event log.
DIRECTIVE_EVENT = "placement_directive"
DONE_EVENT = "placement_done"
#: Default length of the event log when the pool's config names none (as ``emp.lua``).
EVENTS_MAXLEN_DEFAULT = 100_000


@dataclass(frozen=True)
class Directive:
    """One placement directive to a pool's worker(s)."""

    action: str
    model: str
    #: The pool whose stream carries it (its workers act).
    pool: str
    #: A worker id, or ``*``: any idle worker of the pool.
    worker: str = ANY_WORKER
    reason: str = ""
    #: The pool short of the model, when it is not ``pool`` (cross-pool).
    for_pool: str = ""
    #: Models to evict first when the GPU needs room, in this order.
    make_room_from: tuple[str, ...] = ()
    issued_ms: int = 0
    expires_ms: int = 0
    #: Stream id, once published or read.
    id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown directive action {self.action!r} "
                             f"(one of {', '.join(ACTIONS)})")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"a directive needs a model name, got {self.model!r}")
        if not self.worker:
            raise ValueError("a directive needs a worker id or '*'")

    def expired(self, now_ms: int) -> bool:
        """True once ``now_ms`` (Redis' clock, as ``expires_ms``) reaches the expiry."""
        return bool(self.expires_ms) and now_ms >= self.expires_ms

    def for_worker(self, worker_id: str) -> bool:
        """True when ``worker_id`` may act on it (named, or any idle worker)."""
        return self.worker in (worker_id, ANY_WORKER)

    def fields(self) -> dict[str, str]:
        """The stream entry."""
        return {"action": self.action, "model": self.model, "worker": self.worker,
                "reason": self.reason, "for_pool": self.for_pool,
                "make_room_from": ",".join(self.make_room_from),
                "issued_ms": str(self.issued_ms), "expires_ms": str(self.expires_ms)}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the event's data)."""
        data = asdict(self)
        data["make_room_from"] = list(self.make_room_from)
        data.update(data.pop("extra"))
        return data

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str], pool: str) -> Directive:
        """Parse a stream entry; ValueError names what is wrong."""
        try:
            issued, expires = int(fields.get("issued_ms") or 0), int(fields.get("expires_ms") or 0)
        except ValueError:
            raise ValueError(f"directive {entry_id}: bad issued_ms/expires_ms") from None
        room = tuple(m for m in (fields.get("make_room_from") or "").split(",") if m)
        return cls(action=fields.get("action", ""), model=fields.get("model", ""), pool=pool,
                   worker=fields.get("worker", ""), reason=fields.get("reason", ""),
                   for_pool=fields.get("for_pool", ""), make_room_from=room,
                   issued_ms=issued, expires_ms=expires, id=entry_id)


def emit_pool_event(client: Any, pool: str, event: str, data: dict[str, Any],
                    now_ms: int | None = None) -> str:
    """Append an event that concerns no job to the pool's event log (as ``model_loaded``).

    The pool is added to the known pools first, so readers of the log (the API's and
    monitor's event hub, webhooks) read its stream even before any job used it. Its
    ``timestamp`` is Redis' clock: ``now_ms`` when the caller read it, else one TIME call
    (these events are rare: a directive issued or acted on); a host 3 min off stamped
    them 3 min off the job events around them."""
    keys = Keys(pool)
    with client.pipeline(transaction=False) as pipe:  # TIME cannot join: cluster refuses it
        pipe.sadd(NAMESPACES_KEY, pool)
        pipe.hget(keys.config, "events_maxlen")
        _, maxlen = pipe.execute()
    stamp = redis_now_ms(client) if now_ms is None else int(now_ms)
    payload = json.dumps({**data, "timestamp": stamp})
    return client.xadd(keys.events, {"event": event, "job_id": "", "data": payload},
                       maxlen=int(maxlen or EVENTS_MAXLEN_DEFAULT), approximate=True)


def publish(client: Any, directive: Directive, now_ms: int | None = None) -> str:
    """Send a directive to its pool's workers and log it as an event; returns its stream id.

    ``now_ms``: Redis' time the caller read (the leader's tick), else one TIME call."""
    keys = Keys(directive.pool)
    directive_id = client.xadd(keys.directives, directive.fields(), maxlen=DIRECTIVES_MAXLEN,
                               approximate=True)
    emit_pool_event(client, directive.pool, DIRECTIVE_EVENT,
                    {**directive.as_dict(), "id": directive_id}, now_ms)
    return directive_id


def take(client: Any, directive: Directive, worker_id: str, ttl_seconds: int = 600) -> bool:
    """Claim a directive for ``worker_id``: True for a named one, or the first taker of a ``*``."""
    if directive.worker != ANY_WORKER:
        return directive.worker == worker_id
    return bool(client.set(Keys(directive.pool).directive_taken(directive.id), worker_id,
                           nx=True, ex=ttl_seconds))


def last_id(client: Any, pool: str) -> str:
    """The id of the newest directive of a pool ("0-0" when none): read after it."""
    newest = client.xrevrange(Keys(pool).directives, count=1)
    return newest[0][0] if newest else "0-0"
