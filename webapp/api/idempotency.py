"""Idempotent submission: a retried submit gets the first answer, never a second job.

A client that retries after a connection reset cannot know whether its
first submit got through. With an ``Idempotency-Key`` header on ``POST
/api/jobs`` (or a ``message_id`` on the client socket's ``submit_job``) the
first request claims the key with one atomic ``SET NX GET``, together with
the body's fingerprint and the job id it will use; every API process shares
the record. A retry with the same key then:

- gets the stored answer (same status and body) once the first has one;
- while the first has none, answers with the job filed under the claimed id
  (a first request answered 503 by a hung Redis may have filed it late);
- with no such job either (the first is still running, or it failed),
  waits for the first's answer up to one socket timeout
  (``EMP_REDIS_SOCKET_TIMEOUT``), then takes the key over: it notes
  so (``<record>:taken``) and submits under the claimed job id, so that of
  two attempts at most one job exists, and the first, should its filing
  then find the job filed, answers with that job instead of a 409;
- with a different body gets 422 (Stripe's rule), and nothing is written.

Only a 201 is kept as the key's answer: a refused request (the schema's
400, the submit's 400/403/409, a 429) wrote nothing and gives its claim
back (``release``), so its retry is checked afresh and a refusal cannot go
stale (a pool made since). While a retry has taken the key over, a refusal
is stored for that retry's 201 to replace.

Once the submit placed the job, before it files it (``placed``), the first
attempt placed decides the pool for every attempt with the key
(``<record>:route:<digest>``): a retry routed elsewhere (the pools file
edited, workers come or gone, routing on in one API process and off in
another) would otherwise be refused as a taken id
(``capability_router.job_id_reservations``), its first attempt's job being in
the other pool; in the same pool, the pool's own check tells the two apart.

An answer that named a job is replayed only while that job's record is
there: a pool whose workers keep records (``EMP_RETENTION_SECONDS`` after a
job ended) for less than the key's window swept it, and the retry is told so
(409 naming the job, nothing filed) rather than given a 201 naming a job that
404s or a second run. (``emp api`` refuses ``EMP_IDEMPOTENCY_SECONDS`` over its
own ``EMP_RETENTION_SECONDS``; the pools' workers may still keep less.)

Keys are scoped by the caller (a customer, or the admins), so two
customers may use the same key. Records expire after the retention window
(``EMP_IDEMPOTENCY_SECONDS``, 24 h by default).

Key: ``emp:idempotency:<owner>:<kind>:<sha256 of the key>``, a JSON string
``{fingerprint, job_id, status?, body?}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from capability_router.cluster import SOCKET_TIMEOUT_SECONDS
from webapp.auth import Principal
from webapp.settings import IDEMPOTENCY_SECONDS as RETENTION_SECONDS

#: The request header that carries the key.
HEADER = "Idempotency-Key"
#: A key: 1 to 255 visible ASCII characters (as Stripe's), no comma: the server joins
#: a header sent twice into one value with commas, and "a,b" was then taken as one key
#: (its retry with only "a" made a second job).
KEY_FORM = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,255}")
PREFIX = "emp:idempotency:"
#: Suffix of the key that says a retry took a record over (``IdempotencyStore.take_over``).
TAKEN = ":taken"


class KeyReused(ValueError):
    """The key was first used with another body (422)."""


def owner(principal: Principal) -> str:
    """Whose keys these are: one customer's, or the admins'."""
    return "admin" if principal.admin else f"customer:{principal.customer_id}"


def record_key(principal: Principal, kind: str, key: str) -> str:
    """The Redis key of one idempotency key; hashed, so any key length costs the same."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{PREFIX}{owner(principal)}:{kind}:{digest}"


def fingerprint(body: Any) -> str:
    """The body's identity: equal JSON values give equal fingerprints, whatever the spacing
    or key order."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Claim:
    """One request's hold on a key."""

    redis_key: str
    fingerprint: str
    job_id: str
    #: True when this request wrote the record (the first); False for a retry.
    first: bool
    #: The stored answer of an earlier request: (HTTP status, body), or None.
    answer: tuple[int, dict[str, Any]] | None = None


class IdempotencyStore:
    """Claims keys and stores answers in Redis, shared by every API process."""

    def __init__(self, client: redis.Redis, retention_seconds: int = RETENTION_SECONDS) -> None:
        self.client, self.retention = client, retention_seconds

    def claim(self, principal: Principal, kind: str, key: str, body: Any,
              job_id: str | None = None) -> Claim:
        """Claim ``key`` for ``body``, or find an earlier claim of it; KeyReused when the
        earlier claim was for another body. ``job_id`` is the id the job gets (a new one
        when None); a retry gets the first request's."""
        redis_key = record_key(principal, kind, key)
        print_ = fingerprint(body)
        job_id = job_id or str(uuid.uuid4())  # the form of every server-made id
        record = {"fingerprint": print_, "job_id": job_id}
        old = self.client.set(redis_key, json.dumps(record), nx=True, get=True,
                              ex=self.retention)
        if old is None:
            return Claim(redis_key, print_, job_id, first=True)
        earlier = json.loads(old)
        if earlier.get("fingerprint") != print_:
            raise KeyReused(f"{kind} {key!r} was already used with a different request body")
        answer = None
        if "status" in earlier:
            answer = (int(earlier["status"]), earlier["body"])
        return Claim(redis_key, print_, earlier["job_id"], first=False, answer=answer)

    def wait_answer(self, claim: Claim, seconds: float | None = None
                    ) -> tuple[int, dict[str, Any]] | None:
        """The first request's answer once it is stored; None after ``seconds`` (the first
        request may have died: the caller then submits under the same job id).

        By default one socket timeout (``EMP_REDIS_SOCKET_TIMEOUT``): a first request
        still on its way is then at most in one Redis call, which answers or fails
        within it; waiting longer only delays the retry (it was a fixed 5 s, ten times
        a 0.5 s setting). Not half of it (``block_ms``): each read here is short."""
        deadline = time.monotonic() + (SOCKET_TIMEOUT_SECONDS if seconds is None else seconds)
        while time.monotonic() < deadline:
            time.sleep(0.02)
            raw = self.client.get(claim.redis_key)
            record = json.loads(raw) if raw else {}
            if "status" in record:
                return int(record["status"]), record["body"]
        return None

    def stored_answer(self, claim: Claim) -> tuple[int, dict[str, Any]] | None:
        """The answer stored for the key now, or None."""
        raw = self.client.get(claim.redis_key)
        record = json.loads(raw) if raw else {}
        return (int(record["status"]), record["body"]) if "status" in record else None

    def take_over(self, claim: Claim) -> None:
        """Note, before a retry submits under the claimed job id, that it does: the first
        request, if its filing then finds that job, knows it was filed for this key (and
        answers with it) rather than by some other submit naming the same id (a 409)."""
        self.client.set(claim.redis_key + TAKEN, "1", ex=self.retention)

    def taken_over(self, claim: Claim) -> bool:
        """Whether a retry took the key over (``take_over``)."""
        return bool(self.client.exists(claim.redis_key + TAKEN))

    def placed(self, claim: Claim, pool: str, routing: dict[str, str] | None
               ) -> tuple[str, dict[str, str] | None]:
        """The pool and routing record to file the key's job with, given where this attempt
        placed it (``routing``: the router's record fields, None with routing off). The
        first attempt placed decides for all, also when routing is on in one API process
        and off in another."""
        decided = json.dumps({"pool": pool, "routing": routing})
        earlier = self.client.set(_route_key(claim), decided, nx=True, get=True,
                                  ex=self.retention)
        if earlier is not None:
            first = json.loads(earlier)
            pool, routing = first["pool"], first["routing"]
        return pool, routing

    def answer(self, claim: Claim, status: int, body: dict[str, Any]) -> None:
        """Store the answer a retry will get (the key keeps its expiry)."""
        record = {"fingerprint": claim.fingerprint, "job_id": claim.job_id,
                  "status": status, "body": body}
        self.client.set(claim.redis_key, json.dumps(record), xx=True, keepttl=True)

    def release(self, claim: Claim) -> None:
        """Forget a first claim whose request was refused: the key may be used again."""
        if claim.first:
            self.client.delete(claim.redis_key)
            self.client.delete(claim.redis_key + TAKEN)  # apart: another slot in a cluster
            self.client.delete(_route_key(claim))


def _route_key(claim: Claim) -> str:
    """Where the pool of the claim's job is decided: per body and job id, so that a key
    reused with another body after its record expired never files where an old one went."""
    digest = hashlib.sha256(f"{claim.fingerprint}:{claim.job_id}".encode()).hexdigest()
    return f"{claim.redis_key}:route:{digest[:16]}"


def swept_message(job_id: str, key_name: str = HEADER) -> str:
    """Why a retry whose first attempt filed ``job_id`` gets no job: its record is gone."""
    return (f"job {job_id!r}, submitted with this {key_name}, ended and its record was "
            "removed after its pool's retention (EMP_RETENTION_SECONDS); nothing was "
            f"submitted. Submit with a new {key_name} to run it again")


def check_key(key: str) -> str:
    """The header's key, or ValueError naming the header."""
    if "," in key:
        raise ValueError(f"{HEADER} must be given once, as one key (no comma): a header "
                         "sent twice arrives as one, its values joined by commas")
    if not KEY_FORM.fullmatch(key):
        raise ValueError(f"{HEADER} must be 1 to 255 visible ASCII characters")
    return key
