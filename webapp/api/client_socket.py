"""``/ws/client/<client_id>``: submit jobs, follow their progress, cancel them.

Messages in (``type``): ``submit_job`` (job fields at top level, optional
``message_id`` as the job id), ``subscribe_progress {job_id, last_event_id?}``,
``cancel_job {job_id}``. Messages out: ``connection_established``,
``job_submitted`` (with ``warnings`` as ``POST /api/jobs``'s 201 has them),
then the job's events (``job_assigned``, ``update_job_progress``,
``complete_job``, ``job_cancelled``, ...), each with its ``event_id``.
Reconnecting with ``?last_event_id=`` resubscribes the client's jobs and sends
every event it missed.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from simple_websocket import ConnectionClosed

from capability_router.errors import EmpError
from capability_router.keys import Keys
from capability_router.states import TERMINAL, JobEvent, JobStatus
from emp_tasks import producer
from webapp import job_ids
from webapp.api import validation
from webapp.api.events import Event, EventHub, Subscription, id_key
from webapp.api.idempotency import (
    RETENTION_SECONDS,
    IdempotencyStore,
    KeyReused,
    swept_message,
)
from webapp.api.limits import Limited, Limits, SocketPlace
from webapp.api.messages import client_message, error_message, parse_message
from webapp.api.resume import BadResumeId, parse_resume_id
from webapp.api.session import Session, close_socket, refuse
from webapp.api.submission import submit_body
from webapp.api.validation import Invalid
from webapp.auth import Principal
from webapp.backend import Backend
from webapp.outage import (
    REFUSING,
    RETRY_AFTER_SECONDS,
    UNAVAILABLE,
    Outage,
    WriteRefusals,
    log_failure,
)
from webapp.schema_words import quoted

#: How long a client's subscriptions are remembered for a reconnect, seconds.
SUBSCRIPTIONS_TTL = 24 * 3600
#: WebSocket close code "try again later" (RFC 6455 registry: 1013).
CLOSE_TRY_LATER = 1013
#: Seconds between a client socket handler's wake-ups while its client sends nothing. A
#: close by the sender or the renewer closes the socket, which wakes it at once: this only
#: bounds how long a session closed otherwise keeps its handler. At 5 s, 5,000 idle sockets
#: woke 1,000 times a second (~40% of an idle API's CPU).
RECEIVE_WAKE_SECONDS = 30
#: Redis outages and refused writes met by this process's client sockets, logged once.
SOCKET_OUTAGE = Outage("emp api sockets")
SOCKET_REFUSALS = WriteRefusals("emp api sockets")


def _subscriptions_key(principal: Principal, client_id: str) -> str:
    owner = "admin" if principal.admin else f"customer:{principal.customer_id}"
    return f"emp:ws:client:{owner}:{client_id}"


class ClientRenderer:
    """A client's events as its messages: under the ids its customer knows the jobs
    by, a ``job_submitted`` with its submit's ``message_id`` and warnings."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        #: Job id -> the message_id its submit_job carried, echoed on job_submitted.
        self.message_ids: dict[str, Any] = {}
        #: Job id -> its submit's warnings (``pool_view.unserved_warnings``), when some;
        #: sent on its job_submitted, as REST's 201 carries them.
        self.warnings: dict[str, list[str]] = {}

    def expect(self, job_id: str, message_id: Any, warnings: list[str] | None) -> None:
        """What the job's ``job_submitted`` is to carry: its submit's ``message_id`` and,
        when some, its warnings."""
        self.message_ids[job_id] = message_id
        if warnings:
            self.warnings[job_id] = warnings

    def __call__(self, event: Event) -> dict[str, Any]:
        message = self.message(event)
        if message["type"] == "job_submitted":
            if event.job_id in self.message_ids:
                message["message_id"] = self.message_ids.pop(event.job_id)
            if event.job_id in self.warnings:
                message["warnings"] = self.warnings.pop(event.job_id)
        return message

    def message(self, event: Event) -> dict[str, Any]:
        """``event`` as this client's message, under the id its customer knows the job by."""
        message = client_message(event)
        if event.job_id:
            message["job_id"] = job_ids.shown(event.job_id, self.principal.id_scope)
        return message


class ClientConnection:
    """One client's socket: its requests in, its jobs' events out."""

    def __init__(self, ws: Any, client_id: str, principal: Principal, backend: Backend,
                 hub: EventHub, idempotency_seconds: int = RETENTION_SECONDS,
                 limits: Limits | None = None, place: SocketPlace | None = None) -> None:
        self.ws, self.client_id, self.principal = ws, client_id, principal
        self.backend = backend
        self.idempotency = IdempotencyStore(backend.redis, idempotency_seconds)
        #: The customer's limits, and this socket's place among its open sockets.
        self.limits, self.place = limits, place
        sub = Subscription(info={"client_id": client_id, "kind": "client",
                                 "customer_id": principal.customer_id,
                                 "connected_at": int(time.time() * 1000)})
        #: Renders this client's events; its own object, not a method of the connection,
        #: so the session holds no reference back to it (a cycle, freed only by the
        #: cycle collector's full collections, for every socket that closed).
        self.render = ClientRenderer(principal)
        self.session = Session(ws, hub, sub, self.render)
        self.key = _subscriptions_key(principal, client_id)

    def run(self, last_event_id: str | None) -> None:
        try:
            self._run(last_event_id)
        finally:
            if self.place is not None:
                self.place.close()

    def _run(self, last_event_id: str | None) -> None:
        try:
            last_event_id = parse_resume_id(last_event_id)
        except BadResumeId as exc:
            refuse(self.ws, exc)
            return
        self.session.start()
        self.session.send({"type": "connection_established", "client_id": self.client_id,
                           "timestamp": int(time.time() * 1000)})
        if last_event_id:
            self._resubscribe(last_event_id)
        if self.place is not None:
            self.limits.renewer.add(self.place, self._place_lost)
        try:
            while not self.session.closed:
                # Wakes now and then to notice a close by the sender (or the renewer) that
                # left the socket open; one that closes it wakes this at once.
                text = self.ws.receive(timeout=RECEIVE_WAKE_SECONDS)
                if text is not None:
                    self.handle(text)
        except ConnectionClosed:
            pass
        finally:
            self.session.close()

    def _resubscribe(self, after: str) -> None:
        """Follow this client's jobs again from ``after``. A job whose completion is at or
        before ``after`` reached the client: it is forgotten instead, so the list does not
        hold every job a client that keeps submitting ever made (its expiry is renewed by
        each submit), nor a reconnect follow them all again."""
        members = sorted(self.backend.redis.smembers(self.key))
        if not members:
            return
        with self.backend.redis.pipeline(transaction=False) as pipe:
            for member in members:
                namespace, _, job_id = member.partition("|")
                pipe.xrevrange(Keys(namespace).job_events(job_id), count=1)
            lasts = pipe.execute()
        delivered = []
        for member, last in zip(members, lasts, strict=True):
            namespace, _, job_id = member.partition("|")
            if last and last[0][1].get("event") == JobEvent.COMPLETED \
                    and id_key(last[0][0]) <= id_key(after):
                delivered.append(member)
                continue
            self._follow(job_id, after, namespace)
        if delivered:
            self.backend.redis.srem(self.key, *delivered)

    def _place_lost(self, exc: Limited) -> None:
        """This socket's place was lost meanwhile (a stalled process): it ends."""
        self.session.send(error_message(str(exc), status=429))
        self.session.close()
        close_socket(self.ws, CLOSE_TRY_LATER, "too many sockets")

    def handle(self, text: str | bytes) -> None:
        try:
            message = parse_message(text)
        except ValueError as exc:
            self.session.send(error_message(f"invalid message: {exc}"))
            return
        kind = message.get("type")
        handlers = {"submit_job": self.submit, "subscribe_progress": self.subscribe,
                    "cancel_job": self.cancel}
        if not isinstance(kind, str):  # a list or an object is no key of the table
            self.session.send(error_message(f"type must be one of {', '.join(handlers)}",
                                            field="type", message_id=message.get("message_id")))
            return
        handler = handlers.get(kind)
        if handler is None:
            self.session.send(error_message(f"unknown message type {kind!r}",
                                            message_id=message.get("message_id")))
            return
        try:
            handler(message)
        except (*UNAVAILABLE, *REFUSING) as exc:
            # As REST's 503: the client learns why and when to try again, and keeps its
            # socket (the exception closed it with a protocol error and no message).
            reason = log_failure(exc, SOCKET_OUTAGE, SOCKET_REFUSALS,
                                 "answering error 503 on sockets")
            self.session.send(error_message(reason, status=503,
                                            retry_after=RETRY_AFTER_SECONDS,
                                            message_id=message.get("message_id")))
            return
        SOCKET_OUTAGE.succeeded()

    def submit(self, message: dict[str, Any]) -> None:
        """Submit a job. A ``message_id`` is the job id and an idempotency key: a retry
        with the same body is answered as the first was (``job_submitted``), one with
        another body gets an error (422), and no second job is made; once the job's
        record was swept (its pool's retention), error 409 says so. A retry that finds
        no job files it under the message_id, noting so first (``take_over``): the
        first attempt, should it file too, then answers with that job, not a 409."""
        body = {k: v for k, v in message.items() if k != "type"}
        message_id = message.get("message_id")
        try:
            validation.check("JobSubmission", body)
        except Invalid as exc:
            self.session.send(error_message(str(exc), status=exc.status, message_id=message_id))
            return
        claim = None
        if isinstance(message_id, str):
            try:
                claim = self.idempotency.claim(self.principal, "message_id", message_id, body,
                                               message_id)
            except KeyReused as exc:
                self.session.send(error_message(str(exc), status=422, message_id=message_id))
                return
            if not claim.first:
                if self._answer_again(claim.job_id, message_id, _warnings_of(claim)):
                    return
                if claim.answer is not None:  # its job was filed, and swept since
                    self.session.send(error_message(
                        swept_message(claim.job_id, "message_id"), status=409, job_id=claim.job_id,
                        message_id=message_id))
                    return
                self.idempotency.take_over(claim)  # the first, if it files too, answers
        try:
            job_id, pool, warnings = submit_body(
                body, self.principal, self.backend, checked=True, limits=self.limits,
                pin=None if claim is None else partial(self.idempotency.placed, claim))
        except Limited as exc:
            if claim is not None:
                self.idempotency.release(claim)
            self.session.send(error_message(str(exc), status=429, limit=exc.limit,
                                            retry_after=exc.retry_after, message_id=message_id))
            return
        except Invalid as exc:
            if claim is not None and exc.status == 409 and (
                    not claim.first or self.idempotency.taken_over(claim)) and \
                    self._answer_again(claim.job_id, message_id, _warnings_of(claim)):
                return  # the other attempt with this message_id filed it meanwhile
            if claim is not None:
                self.idempotency.release(claim)
            self.session.send(error_message(str(exc), status=exc.status, message_id=message_id))
            return
        if claim is not None:  # filed: a retry that finds no job then knows it was swept
            self.idempotency.answer(claim, 201, {"job_id": job_id,
                                                 **({"warnings": warnings} if warnings else {})})
        # The job's own log answers: job_submitted first, then the rest.
        self.render.expect(job_id, message.get("message_id"), warnings)
        self._follow(job_id, None, pool, remember=True)

    def _answer_again(self, job_id: str, message_id: Any,
                      warnings: list[str] | None = None) -> bool:
        """Answer a retried submit of an existing job as the first was: its
        ``job_submitted`` (with the first answer's ``warnings``), then its events. False
        when there is no such job yet."""
        record = job_ids.visible_record(job_id, self.principal, self.backend.celery)
        if record is None:
            return False
        job_id, pool = record["job_id"], record.get("pool") or "default"
        if job_id in self.session.sub.jobs:  # already followed here: send it once more
            first = self.backend.redis.xrange(Keys(pool).job_events(job_id), count=1)
            if first:
                message = self.render.message(Event.from_entry(*first[0], pool))
                self.session.send({**message, "message_id": message_id,
                                   **({"warnings": warnings} if warnings else {})})
            return True
        self.render.expect(job_id, message_id, warnings)
        self._follow(job_id, None, pool, remember=True)
        return True

    def subscribe(self, message: dict[str, Any]) -> None:
        job_id = message.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            self.session.send(job_id_error("subscribe_progress", message))
            return
        try:
            after = parse_resume_id(message.get("last_event_id"))
        except BadResumeId as exc:
            self.session.send(error_message(str(exc), field=exc.field, job_id=job_id))
            return
        record = self._visible_job(job_id)
        if record is None:
            return
        self._follow(record["job_id"], after, record.get("pool") or "default", remember=True)
        self.session.send({"type": "subscribed", "job_id": job_id,
                           "status": record.get("status")})

    def cancel(self, message: dict[str, Any]) -> None:
        job_id = message.get("job_id")
        if not isinstance(job_id, str) or not job_id:  # as subscribe_progress says it
            self.session.send(job_id_error("cancel_job", message))
            return
        record = self._visible_job(job_id)
        if record is None:
            return
        pool = record.get("pool") or "default"
        self._follow(record["job_id"], None, pool, remember=True)
        status = record.get("status")
        if status not in TERMINAL:
            try:
                status = producer.cancel(record["job_id"], pool=pool,
                                         app=self.backend.cancelling)
            except EmpError as exc:
                self.session.send(error_message(str(exc), job_id=job_id))
                return
            if status == JobStatus.CANCELLED:
                return  # its job_cancelled event answers
        # Ended already: said as REST's cancel says it (409), not left unanswered.
        self.session.send(error_message(f"job {job_id!r} is already {status}", job_id=job_id,
                                        status=409, job_status=str(status)))

    def _visible_job(self, job_id: str) -> dict[str, Any] | None:
        """The record the client knows as ``job_id`` (``webapp.job_ids``), else an error
        sent and None."""
        record = job_ids.visible_record(job_id, self.principal, self.backend.celery)
        if record is None:
            self.session.send(error_message(f"job {job_id} not found", job_id=job_id))
            return None
        return record

    def _follow(self, job_id: str, after: str | None, pool: str,
                remember: bool = False) -> None:
        self.session.follow_job(pool, job_id, after)
        if remember:
            with self.backend.redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self.key, f"{pool}|{job_id}")
                pipe.expire(self.key, SUBSCRIPTIONS_TTL)
                pipe.execute()


def _warnings_of(claim: Any) -> list[str] | None:
    """The warnings the first submit with this message_id was answered with, if any."""
    return claim.answer[1].get("warnings") if claim.answer is not None else None


def job_id_error(kind: str, message: dict[str, Any]) -> dict[str, Any]:
    """The ``error`` for a ``kind`` message without a usable ``job_id``: it names the
    field and what came (before, ``"job_id": 123`` was told only "needs a job_id")."""
    if "job_id" not in message:
        return error_message(f"{kind} needs a job_id", field="job_id")
    return error_message("job_id must be a job id (a non-empty string), got "
                         f"{quoted(message['job_id'])}", field="job_id")
