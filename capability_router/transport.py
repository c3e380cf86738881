"""Capability-matching kombu transport: kombu's Redis transport, read and
written through the EMP Redis Function library.

Features
========
* Publish: a message sent to a queue (a pool namespace) is filed by
  ``emp_enqueue`` under its requirement class; a Celery retry message (same
  task id, ``retries`` > 0) goes to ``emp_retry`` and waits in Redis until due;
  a replacement (``REPLACES_HEADER``, Celery's ``Task.replace`` in a job) goes to
  ``emp_replace``, which refiles the same job as the replacement's run.
* Consume: the worker's capability profile claims the best job it can serve
  with ``emp_claim``. While claims succeed it claims again at once; when
  nothing matches it blocks on its own wake-up list, which an enqueue of a
  job it can serve pushes to. No busy polling, no fixed sleep.
* Acks, rejects and restores go through ``emp_ack`` / ``emp_requeue``. Acks
  ride on the worker's next claim (or go within a third of a lease): the
  task's outcome already released the job, so an ack only catches attempts
  that ended without one. Leases replace the visibility timeout: the worker
  renews the leases of the jobs it holds; a dead worker's jobs go back to
  pending when their lease expires.
* Claim gate: with a ``claim_gate``, the worker asks it before every claim
  whether its service can take a job (``emp_tasks`` passes the connector's
  ``claim_gate``, a health check). While it is closed the worker claims
  nothing: it waits ``claim_gate_retry_seconds`` on its wake-up list and asks
  again, and its registry record says ``service_unhealthy`` with the reason
  (written, with a ``worker_status`` event, when the gate opens or closes).
  Jobs stay pending for workers whose service is up, spending no retries.
* Claim latency: the round trip of every claim that returned a job is
  counted in memory and written to the namespace's metrics hash with the
  lease renewals (``capability_router.metrics``), never per claim.
* Fanout (Celery events, remote control, Flower) is kombu's Redis PUB/SUB,
  unchanged.
* Redis Cluster (``EMP_REDIS_CLUSTER``, see ``capability_router.cluster`` and
  the ``cluster_channel`` mixin): request/reply calls go through a
  ``RedisCluster``, routed by key slot; the
  event loop's one connection is pointed, before each claim or wait, at the
  master of that pool's slot (one connection per master, kept). An idle
  worker of several pools waits on one pool's wake-up list at a time, for
  ``cluster_wake_slice_seconds`` each, in turn, until ``polling_interval``
  has passed: a wake-up in another pool waits in its list until that pool's
  turn, so it is seen within (pools - 1) slices (a server with ``hz 10`` ends
  a 50 ms block after about 100 ms). Celery's reply queues use
  one priority step (one key per BRPOP), and kombu's binding tables one hash
  tag, ``{_kombu}``.

Connection string
=================
Celery: ``broker_url = "redis://host:6379/0"`` with ``broker_transport =
"capability_router.transport:Transport"`` (``emp_tasks`` sets this up).

Transport options
=================
* ``worker_profile``: dict of the worker's capability profile (default: read
  from ``WORKER_*`` environment variables when a consumer starts).
* ``lease_seconds``: lease length in seconds (default 30).
* ``lease_renew_seconds``: seconds between lease renewals (default lease/3).
* ``polling_interval``: longest block on the wake-up list, in seconds
  (default 1); shorter when a retry becomes due sooner.
* ``claim_gate``: a callable returning an object with ``open`` (bool) and
  ``reason`` (str), asked before every claim (default: none, always open).
  It runs on the worker's event loop, so it must be quick and never raise.
* ``claim_gate_retry_seconds``: seconds between asks while the gate is
  closed (default 1).
* ``cluster_wake_slice_seconds``: on a Redis Cluster, longest wait on one
  pool's wake-up list while others wait their turn (default 0.05).
* ``socket_timeout``, ``socket_connect_timeout``: seconds a command or a connect
  waits for Redis (default ``EMP_REDIS_SOCKET_TIMEOUT``, 5, each; kombu's own
  default waits for ever).
* Every option of kombu's Redis transport, except the visibility-timeout
  ones, which leases replace.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from time import monotonic, perf_counter
from typing import Any
from uuid import uuid4

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

from capability_router import job_id_reservations as reservations
from capability_router.cluster import SOCKET_TIMEOUT_SECONDS, refresh_slots
from capability_router.cluster_channel import ClusterChannel
from capability_router.errors import InvalidJob, ReplaceRefused, RetryRefused
from capability_router.functions import (
    CLUSTER_REDIRECTS,
    Claimed,
    QueueFunctions,
    claim_args,
    ensure_library,
    parse_claim,
)
from capability_router.job_id_reservations import NEW_ID_HEADER
from capability_router.jobspec import HEADER, JobSpec
from capability_router.keys import NAMESPACES_KEY, Keys
from capability_router.message_body import CheckedMessage, body_payload, plain_body
from capability_router.metrics import CLAIM, HistogramBuffer
from capability_router.outages import RenewalLog
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry

logger = logging.getLogger(__name__)

#: How this process's lease renewals fare, said once per change (shared with the solo
#: pool's lease keeper, ``emp_tasks.lease_keeper``).
RENEWALS = RenewalLog(logger)

#: Delivery tags of claimed jobs: ``emp|<namespace>|<job id>|<attempt>``.
TAG_PREFIX = "emp|"

#: Header the transport adds to a delivered message: the claim's attempt.
ATTEMPT_HEADER = "emp_attempt"

#: Header of a retry message: the ``max_retries`` its ``self.retry()`` call named, for the
#: job record (``emp_retry``); absent when the call named none.
MAX_RETRIES_HEADER = "emp_max_retries"

#: Header of a replacement message (``EmpTask.replace``): the name of the task it replaces,
#: whose attempt (``ATTEMPT_HEADER``) refiles the job as this message's run (``emp_replace``).
REPLACES_HEADER = "emp_replaces"

#: Header naming one publish (one ``apply_async``), set in the caller's headers: kombu
#: retries a failed publish with those same headers, so its repeat can be told from a
#: second send of the job id (``filed_by``).
PUBLISH_HEADER = "emp_publish"


def make_tag(namespace: str, job_id: str, attempt: int) -> str:
    return f"{TAG_PREFIX}{namespace}|{job_id}|{attempt}"


def parse_tag(tag: Any) -> tuple[str, str, str] | None:
    """(namespace, job id, attempt) of a claimed delivery, None for other messages.

    A pool name has no '|' and an attempt is digits, but a job id is any text
    a producer chose (Celery's ``task_id``): split at the first and last '|' only.
    """
    if not isinstance(tag, str) or not tag.startswith(TAG_PREFIX):
        return None
    namespace, _, rest = tag[len(TAG_PREFIX):].partition("|")
    job_id, _, attempt = rest.rpartition("|")
    return namespace, job_id, attempt


def is_job_queue(queue: str) -> bool:
    """True for a pool namespace; False for Celery's own reply queues (pidbox)."""
    return not (queue.endswith(".pidbox") or queue.startswith("celeryev"))


def task_header(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a job spec a running task reads (see emp_tasks.context)."""
    fields = spec.get("fields", spec)
    return {"pool": spec["pool"], "max_retries": fields.get("max_retries")}


def without_stored_payload(spec: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """The spec without its record ``payload`` when the message body (made plain text
    here) carries the same payload: the job keeps it once (see ``message_body``)."""
    if not plain_body(message):
        return spec
    fields = spec.get("fields")
    if not isinstance(fields, dict) or "payload" not in fields:
        return spec
    if json.loads(fields["payload"]) != body_payload(message["body"]):
        return spec
    return {**spec, "fields": {k: v for k, v in fields.items() if k != "payload"}}


def filed_by(functions: QueueFunctions, job_id: str, message: dict[str, Any]) -> bool:
    """Whether the job record ``job_id`` holds ``message`` itself: an enqueue that found
    its job "already" filed because an earlier send of this very publish ran but its
    reply was lost (a connection cut) and the Redis client, or kombu's retry of the
    publish once the client gave up, sent it again. Refused as a duplicate, the producer
    was told its accepted job failed and submitted it again. The same publish is known
    by its ``PUBLISH_HEADER`` (kept by kombu's retries, which get a new delivery tag),
    else by its delivery tag; a second ``apply_async`` with the same id is neither."""
    stored = functions.client.hget(functions.keys.job(job_id), "message")
    if not stored:
        return False
    try:
        stored_message = loads(stored)
        mine = message.get("headers", {}).get(PUBLISH_HEADER)
        if mine:
            return stored_message.get("headers", {}).get(PUBLISH_HEADER) == mine
        tag = message.get("properties", {}).get("delivery_tag")
        return bool(tag) and stored_message.get("properties", {}).get("delivery_tag") == tag
    except (ValueError, AttributeError):
        return False


def _give_back(functions: QueueFunctions, reservation: Any) -> None:
    """Release a reservation whose filing failed; a failure here is left to its grace."""
    try:
        reservations.release(functions.client, reservation)
    except (redis.RedisError, OSError):
        logger.debug("could not give back the reservation of %s", reservation.job_id,
                     exc_info=True)


def _eta_ms(eta: Any) -> int:
    """A message's ``eta`` in epoch milliseconds; a naive time is UTC, as Celery's worker
    reads it (``maybe_make_aware``), not the publishing machine's local time."""
    if not eta:
        return 0
    if isinstance(eta, (int, float)):
        return int(eta * 1000)
    due = datetime.fromisoformat(str(eta))
    if due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    return int(due.timestamp() * 1000)


class QoS(kombu_redis.QoS):
    """Acks, rejects and restores through the function library, plus leases."""

    restore_at_shutdown = True

    def append(self, message: Any, delivery_tag: Any) -> None:
        # The claim already recorded the lease in Redis; remember locally only.
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        parsed = parse_tag(delivery_tag)
        if parsed:
            self.channel.buffer_ack(*parsed)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        parsed = parse_tag(delivery_tag)
        if parsed and requeue:
            namespace, job_id, attempt = parsed
            try:
                self.channel.functions(namespace).requeue(job_id, attempt,
                                                          "rejected by the worker")
            except redis.RedisError as exc:
                # Held no longer: its lease lapses and the sweep requeues it.
                logger.warning("could not requeue %s (%s: %s); its lease will expire",
                               job_id, type(exc).__name__, exc)
        elif parsed:
            self.channel.buffer_ack(*parsed)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        self.channel.flush_acks()
        for tag in list(self._delivered):
            parsed = parse_tag(tag)
            if parsed:
                namespace, job_id, attempt = parsed
                try:
                    self.channel.functions(namespace).requeue(
                        job_id, attempt, "worker shut down before finishing"
                    )
                except redis.RedisError as exc:
                    logger.warning("could not requeue %s (%s: %s); its lease will expire",
                                   job_id, type(exc).__name__, exc)
        self._delivered.clear()

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        for namespace in self.channel.job_queues:
            self.channel.functions(namespace).sweep()

    def held_leases(self) -> dict[str, list[tuple[str, str]]]:
        """Jobs this channel holds, per namespace."""
        held: dict[str, list[tuple[str, str]]] = {}
        done = set(self._dirty)  # acked, not yet flushed out of _delivered by kombu
        for tag in list(self._delivered):
            if tag in done:
                continue
            parsed = parse_tag(tag)
            if parsed:
                namespace, job_id, attempt = parsed
                held.setdefault(namespace, []).append((job_id, attempt))
        return held

    def renew_leases(self) -> list[str]:
        """Extend the leases of every held job; returns the ids this worker lost."""
        lost: list[str] = []
        channel = self.channel
        channel.flush_acks()
        for namespace, jobs in self.held_leases().items():
            lost += channel.functions(namespace).renew(
                channel.worker.worker_id, channel.lease_ms, jobs
            )
        for job_id in lost:
            logger.warning("lease of job %s was lost; its result will be refused", job_id)
        channel.heartbeat([job_id for jobs in self.held_leases().values() for job_id, _ in jobs])
        channel.flush_metrics()
        channel.report_gave_up()
        return lost


class Channel(ClusterChannel, kombu_redis.Channel):
    """kombu's Redis channel with publish and consume through Redis Functions."""

    QoS = QoS
    Message = CheckedMessage

    #: Lease length, seconds.
    lease_seconds: float = 30.0
    #: Seconds between lease renewals (None: a third of the lease).
    lease_renew_seconds: float | None = None
    #: Seconds between two records of a namespace this process uses (``note_namespace``).
    namespace_refresh_seconds: float = 10.0
    #: The consuming worker's capability profile (dict); None reads WORKER_* env.
    worker_profile: dict[str, Any] | None = None
    #: Called (namespace, job id) for each job the queue failed with no run to report it,
    #: drained with the lease renewals; None leaves them to a worker that reports.
    on_job_gave_up: Callable[[str, str], object] | None = None
    #: Asked before every claim; a closed gate (``open`` false) stops claims. None: always open.
    claim_gate: Callable[[], Any] | None = None
    #: Seconds between asks of a closed claim gate.
    claim_gate_retry_seconds: float = 1.0
    #: Redis Cluster: longest wait on one pool's wake-up list, seconds, while the
    #: other pools of this worker wait their turn.
    cluster_wake_slice_seconds: float = 0.05
    #: Seconds a command (and a connect) waits for Redis; kombu's default, None, waited
    #: for ever on a Redis that stopped answering with its connections open: a publish
    #: hung the API's request, a lease renewal the worker's event loop.
    socket_timeout: float | None = SOCKET_TIMEOUT_SECONDS
    socket_connect_timeout: float | None = SOCKET_TIMEOUT_SECONDS

    from_transport_options = kombu_redis.Channel.from_transport_options + (
        "lease_seconds",
        "lease_renew_seconds",
        "namespace_refresh_seconds",
        "on_job_gave_up",
        "worker_profile",
        "claim_gate",
        "claim_gate_retry_seconds",
        "cluster_wake_slice_seconds",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.setup_cluster()  # before kombu's init connects
        #: Cluster: when the current idle wait ends (monotonic), and whose turn it is.
        self._block_until: float | None = None
        self._wake_turn = 0
        super().__init__(*args, **kwargs)
        self._functions: dict[str, QueueFunctions] = {}
        self._sent: tuple[str, str | None] | None = None
        self._block_next = False
        self._misses = 0
        self._next_due_ms = 0
        #: Why Redis refused the last claim, while it keeps refusing; None otherwise.
        self._refusal: str | None = None
        self._registered_queues: set[str] = set()
        #: Namespace -> when (monotonic) this process last recorded it in NAMESPACES_KEY.
        self._known_queues: dict[str, float] = {}
        self._acks: dict[str, list[tuple[str, str]]] = {}
        #: Namespaces where this worker's last claim got a job, so it holds no idle mark.
        self._busy_in: set[str] = set()
        self._announced = False
        #: Why the claim gate is closed; None while it is open.
        self.unhealthy: str | None = None
        #: Round trips of claims that returned a job, until the next renewal flushes them.
        self.claim_latency = HistogramBuffer(CLAIM)
        self._claim_sent_at = 0.0
        ensure_library(self.sync_client)

    # -- helpers ------------------------------------------------------------

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    @property
    def block_seconds(self) -> float:
        """Longest block on a wake-up list: kombu's ``brpop_timeout`` (5.6 and later set it
        from the ``polling_interval`` option); kombu 5.5 has none, so the option itself."""
        return getattr(self, "brpop_timeout", None) or self.connection.polling_interval or 1

    @property
    def idle_ms(self) -> int:
        return int(self.block_seconds * 1000) + 2000

    @cached_property
    def worker(self) -> WorkerProfile:
        if isinstance(self.worker_profile, WorkerProfile):
            return self.worker_profile
        if self.worker_profile:
            return WorkerProfile.from_dict(self.worker_profile)
        return WorkerProfile.from_env()

    @cached_property
    def sync_client(self) -> redis.Redis:
        """Client for request/reply calls; ``self.client`` is busy claiming."""
        if self.cluster:
            return self.cluster_client
        return self.Client(connection_pool=self.pool)

    def functions(self, namespace: str) -> QueueFunctions:
        functions = self._functions.get(namespace)
        if functions is None:
            functions = QueueFunctions(self.sync_client, namespace)
            self._functions[namespace] = functions
        return functions

    def buffer_ack(self, namespace: str, job_id: str, attempt: str) -> None:
        """Hold an ack until the next claim of the namespace carries it (or a flush).

        Completion, failure and retry already released the lease; the ack only
        catches attempts that ended without an outcome, so it can wait.
        """
        self._acks.setdefault(namespace, []).append((job_id, attempt))

    def flush_acks(self) -> None:
        """Send every buffered ack now."""
        acks, self._acks = self._acks, {}
        for namespace, pairs in acks.items():
            self.functions(namespace).ack(pairs)

    def flush_metrics(self) -> None:
        """Write buffered claim latencies (one pipeline); errors drop that batch only."""
        self.claim_latency.flush(self.sync_client)

    def close(self) -> None:
        try:
            self.flush_acks()
            self.flush_metrics()
            if self._announced:
                WorkerRegistry(self.sync_client).leave(
                    self.worker.worker_id, self.worker.machine_id or "")
        except Exception:  # closing anyway; an unsent ack only delays lease expiry
            logger.debug("could not flush acks at close", exc_info=True)
        super().close()

    def register(self, namespace: str) -> None:
        """Register this worker's profile with a namespace it consumes."""
        self.functions(namespace).register_worker(self.worker)
        self.note_namespace(namespace)
        self._registered_queues.add(namespace)
        self.heartbeat([])

    def _basic_cancel(self, consumer_tag: str) -> Any:
        """Celery's ``cancel_consumer``: the worker also leaves the pool it stopped serving.

        Not its last one: Celery cancels every consumer at a warm shutdown too, while
        runs finish, and the registry record lives on the heartbeats of a pool."""
        queue = self._tag_to_queue.get(consumer_tag)
        result = super()._basic_cancel(consumer_tag)
        if queue in self._registered_queues and len(self._registered_queues) > 1:
            self.unregister(queue)
        return result

    def unregister(self, namespace: str) -> None:
        """Stop counting this worker among a namespace's live and idle workers (its
        heartbeats kept it there, so routing and the monitor saw a worker the pool no
        longer had)."""
        self._registered_queues.discard(namespace)
        keys, worker = Keys(namespace), self.worker
        try:
            with self.sync_client.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.workers, worker.worker_id)
                pipe.zrem(keys.idle, f"{worker.signature}:{worker.worker_id}")
                pipe.execute()
        except redis.RedisError:
            logger.warning("worker %s: could not leave pool %s now; its entry expires",
                           worker.worker_id, namespace, exc_info=True)
        self.heartbeat([job_id for held in self.qos.held_leases().values()
                        for job_id, _ in held])

    def heartbeat(self, jobs: list[str]) -> None:
        """Tell the worker registry this worker is alive and what it holds."""
        if not self._registered_queues:
            return
        try:
            WorkerRegistry(self.sync_client).heartbeat(
                self.worker.as_dict(), sorted(self._registered_queues), jobs,
                ttl_ms=self.lease_ms * 3, first=not self._announced, unhealthy=self.unhealthy,
                lease_ms=self.lease_ms)
            self._announced = True
        except redis.RedisError:
            logger.debug("heartbeat failed; the next renewal retries", exc_info=True)

    def may_claim(self) -> bool:
        """Ask the claim gate; on a change, log it and rewrite the registry record at once.

        A gate that raises counts as closed: a worker that cannot tell
        whether its service works must not take jobs it may only fail.
        """
        if self.claim_gate is None:
            return True
        try:
            gate = self.claim_gate()
            unhealthy = None if gate.open else (gate.reason or "service unhealthy")
        except Exception as exc:  # noqa: BLE001 - any failure of the gate closes it
            unhealthy = f"claim gate failed: {type(exc).__name__}: {exc}"
        if (unhealthy is None) != (self.unhealthy is None):
            self.unhealthy = unhealthy
            self._service_changed()
        return unhealthy is None

    def _service_changed(self) -> None:
        worker = self.worker
        if self.unhealthy is None:
            logger.warning("worker %s: service healthy again; claiming jobs", worker.worker_id,
                           extra={"event": "service_healthy"})
        else:
            logger.warning("worker %s: not claiming jobs: %s", worker.worker_id, self.unhealthy,
                           extra={"event": "service_unhealthy"})
        jobs = [job_id for held in self.qos.held_leases().values() for job_id, _ in held]
        self.heartbeat(jobs)
        if self._announced:
            try:
                WorkerRegistry(self.sync_client).service_changed(
                    worker.worker_id, worker.machine_id or "", self.unhealthy)
            except redis.RedisError:
                logger.debug("could not announce the service change", exc_info=True)

    def report_gave_up(self) -> None:
        """Hand ``on_job_gave_up`` the jobs the queue failed on its own in this worker's
        pools; a report that fails is logged and not retried (the record keeps the end)."""
        if self.on_job_gave_up is None:
            return
        for namespace in self.job_queues:
            for job_id in self.functions(namespace).take_gave_up():
                try:
                    self.on_job_gave_up(namespace, job_id)
                except Exception:  # noqa: BLE001 - one report never stops the renewals
                    logger.warning("could not report job %s, failed by the queue", job_id,
                                   exc_info=True)

    def note_namespace(self, namespace: str) -> None:
        """Record the namespace, so get_job (and every reader of all pools) finds its jobs.

        Again every ``namespace_refresh_seconds``, not once per process: a Redis
        restarted without its data forgets the set, and a pool only this process
        remembered would hide its new jobs from everyone (404 on read and cancel).
        """
        now = monotonic()
        if now - self._known_queues.get(namespace, -math.inf) >= self.namespace_refresh_seconds:
            self.sync_client.sadd(NAMESPACES_KEY, namespace)
            self._known_queues[namespace] = now

    # -- publish ------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if not is_job_queue(queue):
            return super()._put(queue, message, **kwargs)
        kwargs.pop("_publish_batch", None)
        if isinstance(message.get("headers"), dict):
            message["headers"].setdefault(PUBLISH_HEADER, uuid4().hex)
        # A copy: kombu retries a failed publish with the same message.
        message = {**message, "headers": dict(message.get("headers") or {})}
        headers = message["headers"]
        job_id = headers.get("id") or message["properties"].get("correlation_id")
        spec = headers.get(HEADER)
        if spec is None:
            spec = JobSpec(service=headers.get("task") or queue, pool=queue).header()
        priority = spec.get("fields", spec).get("priority")
        if priority is not None:
            # Celery hands a run its message's priority (``request.delivery_info``); the
            # task took the job's out of Celery's options, so the message said 0.
            message["properties"] = {**message["properties"], "priority": int(priority)}
        # The job record keeps the spec; the stored message keeps what the
        # running task reads (pool, max_retries), so every claim moves less.
        headers[HEADER] = task_header(spec)
        spec = without_stored_payload(spec, message)
        functions = self.functions(queue)
        self.note_namespace(queue)
        due_ms = _eta_ms(headers.get("eta"))
        headers["eta"] = None  # the due time is Redis's business; the message runs at once
        if REPLACES_HEADER in headers:
            attempt, replaced = headers.pop(ATTEMPT_HEADER, ""), headers.pop(REPLACES_HEADER)
            outcome = functions.replace(job_id, attempt, spec, dumps(message), {
                "from_task": replaced, "to_task": headers.get("task")}, due_ms)
            if outcome not in ("delayed", "queued"):
                raise ReplaceRefused(job_id, outcome)  # changed nothing
            return
        if headers.get("retries"):
            outcome = functions.retry(
                job_id, headers.pop(ATTEMPT_HEADER, ""), due_ms, dumps(message),
                headers.pop("emp_error", ""), headers.pop(MAX_RETRIES_HEADER, None),
            )
            if outcome in ("delayed", "queued"):
                return
            if outcome != "missing" or "class" not in spec:
                # The sending task ends quietly on it, so Celery stores no RETRY.
                raise RetryRefused(job_id, outcome)
        reservation = None
        if headers.get(NEW_ID_HEADER) != job_id:  # chosen by the caller: may be taken
            reservation = reservations.reserve(
                functions.client, job_id, queue, spec.get("fields", {}).get("customer_id") or "")
        try:
            outcome, status = functions.enqueue(
                job_id, spec, dumps(message), due_ms,
                id_token=reservation.token if reservation else "")
        except InvalidJob:  # refused before it was sent; any other failure may have filed
            if reservation is not None:  # it (a lost reply): the reservation stays, and
                _give_back(functions, reservation)  # fences such a filing once taken over
            raise
        if outcome == "fenced":  # a submit to another pool took the id meanwhile
            _give_back(functions, reservation)
            raise reservations.taken(job_id, "filed in another pool")
        if outcome == "duplicate" and not filed_by(functions, job_id, message):
            raise reservations.taken(job_id, str(status))

    # -- consume ------------------------------------------------------------

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        if queue not in self._fanout_queues and is_job_queue(queue):
            self.register(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def _deliver_claimed(self, namespace: str, claimed: Claimed) -> dict[str, Any]:
        message = loads(claimed.message)
        message["properties"]["delivery_tag"] = make_tag(
            namespace, claimed.job_id, claimed.attempt
        )
        message["headers"][ATTEMPT_HEADER] = claimed.attempt
        if claimed.attempt > 1:
            message["headers"]["redelivered"] = True
        return message

    def _get(self, queue: str) -> dict[str, Any]:
        if not is_job_queue(queue):
            return super()._get(queue)
        self.flush_acks()
        if queue not in self._registered_queues:
            self.register(queue)
        if not self.may_claim():
            raise kombu_redis.Empty()
        started = perf_counter()
        result = self.functions(queue).claim(
            self.worker.signature, self.worker.worker_id, self.lease_ms, self.idle_ms
        )
        if isinstance(result, Claimed):
            self.claim_latency.observe(queue, perf_counter() - started)
            return self._deliver_claimed(queue, result)
        raise kombu_redis.Empty()

    @property
    def job_queues(self) -> list[str]:
        return [q for q in self.active_queues if is_job_queue(q)]

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self.job_queues:
            self._sent = ("BRPOP", None)
            # kombu 5.6 and later read None as brpop_timeout, 5.5 as "block for ever":
            # a BRPOP of Celery's reply queue that never ends sends no claim after it.
            timeout = timeout or self.block_seconds
            if self.cluster:
                return self._cluster_brpop_start(timeout)
            return super()._brpop_start(timeout)
        queues = [q for q in self._queue_cycle.consume(len(self.active_queues))
                  if is_job_queue(q)]
        if not queues:
            return
        worker = self.worker
        if self._block_next:
            wait = self.block_seconds
            if self._next_due_ms:
                wait = max(0.01, min(wait, self._next_due_ms / 1000))
            pools = self.job_queues
            if self.cluster:
                # No BLPOP across slots: one pool's list at a time, in turn.
                now = monotonic()
                if self._block_until is None:
                    self._block_until = now + wait
                pools = [pools[self._wake_turn % len(pools)]]
                self._use_node_of(Keys(pools[0]).config)
                wait = max(0.01, self._block_until - now)
                if len(self.job_queues) > 1:
                    wait = min(wait, self.cluster_wake_slice_seconds)
            self._send_wait(pools, wait)
        elif not self.may_claim():
            # Service down: wait, then ask the gate again. Its idle mark, which
            # this worker no longer renews, expires within idle_ms, so
            # enqueues stop waking it.
            pools = self.job_queues
            if self.cluster:
                pools = pools[:1]
                self._use_node_of(Keys(pools[0]).config)
            self._send_wait(pools, self.claim_gate_retry_seconds)
        else:
            queue = queues[0]
            if self.cluster:
                self._use_node_of(Keys(queue).config)
            connection = self._in_poll = self.client.connection
            self._brpop_sent_at = monotonic()
            self._sent = ("FCALL", queue)
            self._claim_sent_at = perf_counter()
            connection.send_command(
                *claim_args(Keys(queue), worker.signature, worker.worker_id,
                            self.lease_ms, self.idle_ms, queue not in self._busy_in,
                            self._acks.pop(queue, ()))
            )

    def _send_wait(self, pools: list[str], wait: float) -> None:
        """Block on the wake-up lists of ``pools`` for up to ``wait`` seconds."""
        connection = self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self._sent = ("BLPOP", None)
        worker_id = self.worker.worker_id
        connection.send_command("BLPOP", *(Keys(q).wake(worker_id) for q in pools), wait)

    def _brpop_read(self, **options: Any) -> bool:
        command, queue = self._sent or ("BLPOP", None)
        if command == "BRPOP":
            self._sent = None
            return super()._brpop_read(**options)
        try:
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                if command == "FCALL" and queue:
                    self._give_back_unreceived(queue)
                raise
            except redis.ResponseError as exc:
                self._recover(queue, exc)
                raise kombu_redis.Empty() from None
            if command == "BLPOP":
                if (self._block_until is not None and reply is None and self._block_next
                        and monotonic() < self._block_until - 0.005):
                    self._wake_turn += 1  # cluster: the next pool's turn to wait
                    raise kombu_redis.Empty()
                self._block_next = False
                self._block_until = None
                self._misses = 0
                raise kombu_redis.Empty()
            result = parse_claim(reply)
            self._claim_answered()
            if isinstance(result, Claimed):
                self.claim_latency.observe(queue, perf_counter() - self._claim_sent_at)
                self._busy_in.add(queue)
                self._misses = 0
                self._queue_cycle.rotate(queue)
                self.connection._deliver(self._deliver_claimed(queue, result), queue)
                return True
            self._busy_in.discard(queue)
            self._misses += 1
            self._next_due_ms = result
            self._queue_cycle.rotate(queue)
            if self._misses >= len(self.job_queues):
                self._block_next = True
                self._misses = 0
            raise kombu_redis.Empty()
        finally:
            self._in_poll = None
            self._sent = None
            self._after_read()

    def _after_read(self) -> None:
        """What kombu's own ``_brpop_read`` does once a reply is read, where this kombu
        does it: 5.7 flushes a pending re-auth token (``_flush_brpop_reauth``); 5.5 and
        5.6 have no such step. Called unconditionally, the missing method raised from
        ``finally`` on 5.6: the worker's first empty claim ended it ("Unrecoverable
        error"), so it said ready and never took a job."""
        flush = getattr(super(), "_flush_brpop_reauth", None)
        if flush is not None:
            flush()

    def _give_back_unreceived(self, queue: str) -> None:
        """The reply to a claim was lost (connection cut): Redis may have assigned a job
        to this worker that it never received. Give it back now, on another connection,
        rather than let it wait for its lease and then count an attempt; if Redis cannot
        be reached either, the lease still returns it."""
        held = [tag[1] for tag in map(parse_tag, list(self.qos._delivered))
                if tag and tag[0] == queue]
        try:
            given = self.functions(queue).unclaim(self.worker.worker_id, held)
        except (redis.RedisError, *self.connection_errors) as exc:
            logger.warning("a claim's reply was lost and Redis is unreachable (%s): a job it "
                           "assigned returns to pending when its lease expires", exc)
            return
        if given:
            logger.warning("a claim's reply was lost: gave back %s, never received",
                           ", ".join(given))

    def _recover(self, queue: str | None, exc: redis.ResponseError) -> None:
        """Answer a refused claim: reload the library or re-register the profile."""
        text = str(exc)
        if self.cluster and isinstance(exc, CLUSTER_REDIRECTS):
            refresh_slots(self.cluster_client)  # resharded or failed over
            return
        if "Function not found" in text:
            ensure_library(self.sync_client)
        if queue and ("NOPROFILE" in text or "Function not found" in text):
            self.register(queue)
        else:
            self._claim_refused(text)

    def _claim_refused(self, text: str) -> None:
        """A claim Redis refused for a reason a retry cannot fix at once (out of memory,
        a read-only replica): wait on the wake-up list before the next one, and log the
        reason once, not per claim (claiming again at once spun ~3,000 claims and error
        lines a second while Redis was at maxmemory)."""
        self._block_next = True
        if text != self._refusal:
            logger.error("claim failed: %s (claiming again every %s s until Redis accepts)",
                         text, self.block_seconds)
            self._refusal = text

    def _claim_answered(self) -> None:
        """A claim got an answer: end a run of refusals, saying so."""
        if self._refusal is not None:
            logger.warning("claims accepted again (after: %s)", self._refusal)
            self._refusal = None

    def _purge(self, queue: str) -> int:
        """Celery's purge (``celery purge``, ``worker --purge``): cancel the pool's
        pending jobs. kombu's own emptied a list no job is kept in, answering 0."""
        if not is_job_queue(queue):
            return super()._purge(queue)
        return self.functions(queue).purge()

    def _size(self, queue: str) -> int:
        if not is_job_queue(queue):
            return super()._size(queue)
        return self.functions(queue).pending_count()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the capability-matching channel."""

    Channel = Channel
    driver_type = "redis"
    driver_name = "emp"

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        options = connection.client.transport_options
        lease = float(options.get("lease_seconds", Channel.lease_seconds))
        every = float(options.get("lease_renew_seconds") or lease / 3)
        old = getattr(self.cycle, "_lease_tref", None)
        if old is not None:
            old.cancel()
        self.cycle._lease_tref = loop.call_repeatedly(every, self.renew_leases)

    def renew_leases(self) -> None:
        """Renew the leases of every channel's jobs; failures are said once (``RENEWALS``),
        a traceback is kept for debug logs."""
        refusal, unreachable = None, None
        for channel in list(self.cycle._channels):
            try:
                channel.qos.renew_leases()
            except channel.connection_errors as exc:
                logger.debug("lease renewal failed; retrying next period", exc_info=True)
                unreachable = exc
            except redis.ResponseError as exc:
                refusal = str(exc)
        if refusal:
            RENEWALS.refused(refusal)
        elif unreachable is not None:
            RENEWALS.unreachable(unreachable)
        else:
            RENEWALS.accepted()


__all__ = ["Transport", "Channel", "QoS", "make_tag", "parse_tag"]
