"""Per-customer limits of the API: submissions per second, unfinished jobs, open sockets.

One tenant must not be able to fill the queue or the API for everyone else.
Each customer token's customer has:

- ``rate``/``burst``: a token bucket of submissions (``rate`` per second,
  up to ``burst`` at once);
- ``pending``: jobs admitted and not yet finished (waiting or running);
- ``classes``: distinct requirement classes among those jobs (each class
  costs every claim that could serve it, so one tenant's thousand one-off
  classes would slow everyone's claims);
- ``sockets``: client WebSockets open at once.

Over a limit the request gets 429 with ``Retry-After`` (a socket handshake
too) and nothing is written. Every check-and-take is one call of the
``emp_limits`` Redis Function library (``limits.lua``), so all API processes
share the counts. Admin tokens have no limits. 0 means no limit.

Defaults come from ``EMP_LIMIT_RATE``, ``EMP_LIMIT_BURST``,
``EMP_LIMIT_PENDING``, ``EMP_LIMIT_CLASSES`` and ``EMP_LIMIT_SOCKETS``; ``EMP_CUSTOMER_LIMITS``
overrides them per customer: ``"acme:rate=5,pending=100;globex:sockets=10"``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from functools import lru_cache

import redis

from capability_router.keys import Keys
from capability_router.libraries import load_unless_newer, stamped_source
from capability_router.states import TERMINAL
from webapp.auth import Principal
from webapp.settings import CustomerLimits

#: A socket's place lasts this long (ms) unless renewed; a dead process's places free
#: themselves within it.
SOCKET_LEASE_MS = 60_000
#: Seconds between renewals of the open sockets' places (all of a process's at once).
SOCKET_RENEW_SECONDS = 20.0
logger = logging.getLogger(__name__)
#: The open-jobs set of a customer is forgotten this long (ms) after its last admission.
OPEN_SET_MS = 7 * 24 * 3600 * 1000
#: Oldest admitted jobs looked at when a customer is at its limit (finished ones leave).
PRUNE_BATCH = 200

_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,100}")


class Limited(Exception):
    """A request over one of its customer's limits (429)."""

    def __init__(self, limit: str, retry_after_ms: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        #: Whole seconds to wait, at least 1 (``Retry-After``).
        self.retry_after = max(1, math.ceil(retry_after_ms / 1000))


@lru_cache(maxsize=1)
def library_source() -> str:
    """The Lua source with its VERSION stamped by a digest of the text."""
    return stamped_source('webapp.api', 'limits.lua')


def ensure_library(client: redis.Redis) -> bool:
    """Load the library unless the server (every master of a cluster) has this version
    or a newer release (see ``capability_router.libraries``); True if loaded."""
    return load_unless_newer(client, library_source(), 'emp_limits_version')


def customer_prefix(customer_id: str) -> str:
    """``emp:limits:{<customer>}:``; a customer id that could break the hash tag is hashed."""
    tag = customer_id if _PLAIN_ID.fullmatch(customer_id) else hashlib.sha256(
        customer_id.encode()).hexdigest()[:32]
    return f"emp:limits:{{{tag}}}:"


class Limits:
    """The limits of every customer, checked and taken in Redis.

    :param client: a redis-py client with ``decode_responses=True``.
    :param default: limits of a customer not named in ``per_customer``.
    :param per_customer: customer id -> its limits.
    """

    def __init__(self, client: redis.Redis, default: CustomerLimits | None = None,
                 per_customer: dict[str, CustomerLimits] | None = None) -> None:
        self.client = client
        self.default = default or CustomerLimits()
        self.per_customer = per_customer or {}
        self.renewer = SocketRenewer(self)

    def of(self, customer_id: str) -> CustomerLimits:
        return self.per_customer.get(customer_id, self.default)

    def call(self, name: str, keys: list[str], *args: object) -> object:
        try:
            return self.client.fcall(name, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            if "Function not found" not in str(exc):
                raise
            ensure_library(self.client)  # a restarted Redis without persistence
            return self.client.fcall(name, len(keys), *keys, *args)

    # -- submissions --------------------------------------------------------

    def admit_job(self, principal: Principal, pool: str, job_id: str,
                  class_signature: str) -> None:
        """Take a submission token, a pending place and (a new class) a class place for
        the job; Limited when over."""
        if principal.admin or principal.customer_id is None:
            return
        limits = self.of(principal.customer_id)
        keys = self._job_keys(principal.customer_id)
        args = (limits.rate, limits.burst, limits.pending, _member(pool, job_id, class_signature),
                OPEN_SET_MS, limits.classes, class_signature)
        reply = self.call("emp_limit_admit", keys, *args)
        if reply[0] == 0 and reply[1] != "rate" and self._prune(keys[1], keys[2]):
            reply = self.call("emp_limit_admit", keys, *args)
        if reply[0] == 0:
            raise self._refusal(reply[1], int(reply[2]), limits)

    def forget_job(self, principal: Principal, pool: str, job_id: str,
                   class_signature: str) -> None:
        """Undo ``admit_job`` for a submit refused after it (token and places back)."""
        if principal.admin or principal.customer_id is None:
            return
        limits = self.of(principal.customer_id)
        self.call("emp_limit_forget", self._job_keys(principal.customer_id), limits.rate,
                   limits.burst, _member(pool, job_id, class_signature))

    @staticmethod
    def _job_keys(customer_id: str) -> list[str]:
        prefix = customer_prefix(customer_id)
        return [prefix + "bucket", prefix + "open", prefix + "classes"]

    def _prune(self, open_key: str, classes_key: str) -> bool:
        """Release finished (or expired) jobs among the oldest admitted; True if any were
        found: released by this call or, racing it, by another request of the customer's
        (which may have left a place free all the same: worth asking again)."""
        members = self.client.zrange(open_key, 0, PRUNE_BATCH - 1)
        with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                pool, job_id, _ = member.split("|", 2)
                pipe.hget(Keys(pool).job(job_id), "status")
            statuses = pipe.execute()
        done = [m for m, status in zip(members, statuses, strict=True)
                if status is None or status in TERMINAL]
        if done:
            self.call("emp_limit_release", [open_key, classes_key], *done)
        return bool(done)

    @staticmethod
    def _refusal(limit: str, retry_ms: int, limits: CustomerLimits) -> Limited:
        if limit == "rate":
            return Limited(limit, retry_ms, f"over this customer's submission rate "
                                            f"({limits.rate:g}/s, burst {limits.burst})")
        if limit == "classes":
            return Limited(limit, retry_ms, f"this customer's unfinished jobs already span "
                                            f"{limits.classes} requirement classes, its limit; "
                                            "submit into one of them or wait")
        return Limited(limit, retry_ms, f"this customer has {limits.pending} unfinished jobs, "
                                        "its limit; wait for some to finish")

    # -- sockets ------------------------------------------------------------

    def open_socket(self, principal: Principal, connection_id: str) -> SocketPlace | None:
        """Take a socket place (None for admins); Limited when the customer has none left."""
        if principal.admin or principal.customer_id is None:
            return None
        place = SocketPlace(self, principal.customer_id, connection_id)
        place.renew()
        return place


def sockets_refusal(most: int, retry_ms: int) -> Limited:
    """The refusal of a socket place: the customer already has ``most`` open."""
    return Limited("sockets", retry_ms, f"this customer has {most} sockets open, its limit; "
                                        "close one first")


def _member(pool: str, job_id: str, class_signature: str) -> str:
    return f"{pool}|{job_id}|{class_signature}"


class SocketPlace:
    """One open socket's place among its customer's; renew it while open, close it after."""

    def __init__(self, limits: Limits, customer_id: str, connection_id: str) -> None:
        self.limits, self.customer_id, self.connection_id = limits, customer_id, connection_id
        self.key = customer_prefix(customer_id) + "sockets"

    def renew(self) -> None:
        most = self.limits.of(self.customer_id).sockets
        reply = self.limits.call("emp_limit_open_socket", [self.key], most,
                                  self.connection_id, SOCKET_LEASE_MS)
        if reply[0] == 0:
            raise sockets_refusal(most, int(reply[2]))

    def close(self) -> None:
        self.limits.renewer.remove(self)
        try:
            self.limits.call("emp_limit_close_socket", [self.key], self.connection_id)
        except redis.RedisError:  # the lease ends by itself
            pass


class SocketRenewer:
    """Renews every open socket place of the process in one round trip.

    One renewal call per socket every 20 s was ~6% of an API process holding
    750 sockets (the calls, and a wake-up of each socket's thread to make
    them); the places of 2,500 sockets now cost one pipeline. A place found
    lost (its lease ran out while the process stalled, and the customer's
    other sockets took it) is handed to its ``on_lost``.
    """

    def __init__(self, limits: Limits, every: float = SOCKET_RENEW_SECONDS) -> None:
        self.limits, self.every = limits, every
        self._lock = threading.Lock()
        self._places: dict[SocketPlace, Callable[[Limited], None]] = {}
        self._thread: threading.Thread | None = None

    def add(self, place: SocketPlace, on_lost: Callable[[Limited], None]) -> None:
        with self._lock:
            self._places[place] = on_lost
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="emp-socket-renewer")
                self._thread.start()

    def remove(self, place: SocketPlace) -> None:
        with self._lock:
            self._places.pop(place, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            try:
                self.renew_all()
            except redis.RedisError as exc:  # the leases outlast a few failed rounds
                logger.warning("could not renew the sockets' places: %s", exc)

    def renew_all(self) -> None:
        """Renew every registered place now; call ``on_lost`` for those refused."""
        with self._lock:
            places = list(self._places.items())
        if not places:
            return
        with self.limits.client.pipeline(transaction=False) as pipe:
            for place, _ in places:
                pipe.fcall("emp_limit_open_socket", 1, place.key,
                           self.limits.of(place.customer_id).sockets, place.connection_id,
                           SOCKET_LEASE_MS)
            replies = pipe.execute(raise_on_error=False)
        for (place, on_lost), reply in zip(places, replies, strict=True):
            if isinstance(reply, Exception):
                if "Function not found" in str(reply):
                    ensure_library(self.limits.client)  # a restarted Redis: next round
                continue
            if reply[0] == 0:
                self.remove(place)
                on_lost(sockets_refusal(self.limits.of(place.customer_id).sockets,
                                        int(reply[2])))
