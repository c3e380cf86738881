"""A job id names at most one job across all pools.

Each pool refuses an id it already holds, in the one Redis Function call that
files the job (``emp_enqueue``): its keys share a hash tag, so that check runs
on Redis Cluster. Nothing there sees the other pools. A submit that chooses
its job's id therefore reserves the id first, with ``SET NX GET`` on
``emp:job-id:<id>`` (a key of its own slot, value ``{pool, token, customer}``),
then files it. The reservation and the filing cannot be one atomic call on a
cluster (other slots), so the order carries the guarantee:

1. Reserve. ``SET NX`` answers with the holder when there is one.
2. Free id (no holder): a job may still sit in another pool under an expired
   reservation (or one filed before reservations), so every known pool but the
   submit's own is read (its own refuses in step 3 atomically). Found: refused,
   and the reservation given back.
3. The holder names this pool: file; the pool's own check decides (a taken id
   is ``duplicate``, exactly as before).
4. The holder names another pool: its record there means the id is taken
   (refused, "already exists"). No record and a reservation younger than
   ``GRACE_SECONDS``: the holder's filing is on its way, refused the same way.
   Older: the holder's filing failed (its process died, Redis lost the call)
   or its record was swept at retention. The submit then fences that pool
   (``emp_fence_id``: in the pool's slot, atomically with a look at the record,
   it marks the holder's token refused, so a filing of the holder arriving
   however late is ``fenced``, not filed), takes the reservation over with a
   compare and set (``emp_id_swap``), and goes on as with a free id.
5. File with the reservation's token (the holder's, in step 3). Refused before
   it was sent, or fenced: the reservation is given back by compare and
   delete, so it does not hold an id no job has. Any other failure (a lost
   reply, a timeout, no replica) may have filed the job, or may file it late:
   the reservation stays, and step 4 fences such a filing after the grace.

No duplicate: ``SET NX`` gives a free id to one submit only; two submits of
one id then meet on its reservation (steps 3/4: the pool's atomic check, or a
refusal), or the later one finds the earlier's record (step 2); a holder
overtaken in step 4 can no longer file. Nothing lost: a submit is refused only
when a record holds the id or a reservation younger than the grace does; a
job once filed is never removed here. Left open: a filing arriving more than
``RESERVATION_SECONDS`` after its reservation (a Redis hung for a day), and a
crash between step 4's fence and its swap (the fenced holder's pool then
refuses that id until the reservation expires or another pool takes it).

Ids the server made (uuid4: ``NEW_ID_HEADER`` names one) skip all this: two of
them never collide (122 random bits), and its caller learns it only once it is
filed, so a chosen id equal to it finds its record in step 2.

Reservations expire after ``RESERVATION_SECONDS`` (a filing is long done by
then; a job living longer is found by step 2), fences after the same time.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from capability_router.errors import InvalidJob
from capability_router.functions import QueueFunctions, ensure_library
from capability_router.keys import DEFAULT_NAMESPACE, NAMESPACES_KEY, Keys, job_id_reservation

#: Header a producer sets to the id it made itself (uuid4): no reservation needed.
NEW_ID_HEADER = "emp_new_id"
#: How long a reservation and a fence last.
RESERVATION_SECONDS = 86400
#: A reservation younger than this with no record may be a filing on its way.
GRACE_SECONDS = 60


def key(job_id: str) -> str:
    """The Redis key of ``job_id``'s reservation."""
    return job_id_reservation(job_id)


@dataclass
class Reservation:
    """One submit's hold on a job id."""

    job_id: str
    pool: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    customer: str = ""
    #: True when this submit wrote it (it gives it back if its filing fails).
    mine: bool = True

    @property
    def value(self) -> str:
        return json.dumps({"pool": self.pool, "token": self.token, "customer": self.customer})

    @classmethod
    def parse(cls, job_id: str, raw: str | bytes) -> Reservation:
        data = json.loads(raw)
        return cls(job_id, data["pool"], data["token"], data.get("customer") or "", mine=False)


def taken(job_id: str, status: str) -> InvalidJob:
    """The refusal of a taken id: the words a second submit in the same pool gets."""
    return InvalidJob(f"job {job_id!r} already exists (it is {status}); not filed again")


def holder(client: redis.Redis, job_id: str) -> Reservation | None:
    """The reservation of ``job_id`` while it may stand for a filing on its way (younger
    than the grace); None otherwise. For readers that answer before filing."""
    with client.pipeline(transaction=False) as pipe:
        pipe.get(key(job_id))
        pipe.ttl(key(job_id))
        raw, ttl = pipe.execute()
    if raw is None or RESERVATION_SECONDS - int(ttl) >= GRACE_SECONDS:
        return None
    return Reservation.parse(job_id, raw)


def reserve(client: redis.Redis, job_id: str, pool: str, customer: str = "") -> Reservation:
    """Reserve ``job_id`` for a filing in ``pool`` (steps 1-4 above); InvalidJob "already
    exists" when another job has it or is being filed under it."""
    mine = Reservation(job_id, pool, customer=customer)
    for _ in range(3):  # again when the holder changed while it was looked at
        with client.pipeline(transaction=False) as pipe:  # one round trip (two slots)
            pipe.set(key(job_id), mine.value, nx=True, get=True, ex=RESERVATION_SECONDS)
            pipe.smembers(NAMESPACES_KEY)
            old, known = pipe.execute()
        if old is not None:
            earlier = Reservation.parse(job_id, old)
            if earlier.pool == pool:
                return earlier  # the pool's own check decides
            if not _take_over(client, earlier, mine):
                continue
        _refuse_if_elsewhere(client, mine, {_text(n) for n in known} | {DEFAULT_NAMESPACE})
        return mine
    raise taken(job_id, "being submitted")


def release(client: redis.Redis, reservation: Reservation) -> None:
    """Give back a reservation whose filing failed or was refused (only this submit's)."""
    if reservation.mine:
        _swap(client, reservation.job_id, reservation.value, "")


def _take_over(client: redis.Redis, earlier: Reservation, mine: Reservation) -> bool:
    """Take the id from a holder in another pool whose job is not there, once its filing
    can no longer be on its way; InvalidJob when it holds the id, False when the
    reservation changed meanwhile (given back, or taken by another submit)."""
    functions = QueueFunctions(client, earlier.pool)
    ttl = int(client.ttl(key(mine.job_id)))
    if ttl == -2:
        return False  # given back meanwhile
    if RESERVATION_SECONDS - ttl < GRACE_SECONDS:
        status = functions.client.hget(Keys(earlier.pool).job(mine.job_id), "status")
        raise taken(mine.job_id, _text(status) if status else "being submitted")
    reply = functions.fence_id(mine.job_id, earlier.token, RESERVATION_SECONDS * 1000)
    if reply[0] == "exists":
        raise taken(mine.job_id, reply[1])
    return _swap(client, mine.job_id, earlier.value, mine.value)


def _refuse_if_elsewhere(client: redis.Redis, mine: Reservation, pools: set[str]) -> None:
    """InvalidJob when another of ``pools`` holds a job under the id (its reservation
    gone, or it was filed before reservations)."""
    others = sorted(pools - {mine.pool})
    if not others:
        return
    with client.pipeline(transaction=False) as pipe:
        for pool in others:
            pipe.hget(Keys(pool).job(mine.job_id), "status")
        found = [status for status in pipe.execute() if status]
    if found:
        release(client, mine)
        raise taken(mine.job_id, _text(found[0]))


def _swap(client: redis.Redis, job_id: str, expected: str, new: str) -> bool:
    """Compare and set (``new`` '': delete) of the reservation; routed by its key."""
    command = ("FCALL", "emp_id_swap", 1, key(job_id), expected, new, RESERVATION_SECONDS)
    try:
        reply = client.execute_command(*command)
    except redis.ResponseError as exc:
        if "Function not found" not in str(exc):
            raise
        ensure_library(client)
        reply = client.execute_command(*command)
    return int(reply) == 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
