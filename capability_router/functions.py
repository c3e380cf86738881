"""The Redis Function library: loading it, and one Python wrapper per function.

``lua/emp.lua`` ships as package data. ``ensure_library`` loads it when the
server lacks it or holds another version (``FUNCTION LOAD REPLACE``), so any
process may call it at start. Wrappers reload once and retry when the server
lost its functions (a restart without persistence).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from time import monotonic, sleep
from typing import Any

import redis
from redis.exceptions import AskError, ClusterDownError, TryAgainError

from capability_router.cluster import (
    block_ms,
    cluster_enabled,
    is_cluster_client,
    node_for_key,
    refresh_slots,
)
from capability_router.env import env_at_least, env_int
from capability_router.errors import InvalidJob, NotReplicated
from capability_router.green import is_green
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys, check_job_id, known_namespaces
from capability_router.libraries import (  # noqa: F401 - loaded_versions: re-exported
    load_unless_newer,
    loaded_versions,
    source_version,
    stamped_source,
)
from capability_router.profile import WorkerProfile

LIBRARY_NAME = "emp"


def redis_now_ms(client: Any) -> int:
    """Redis TIME in ms: the clock the function library, stream ids and every process
    share (hosts' own clocks drift apart)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@lru_cache(maxsize=1)
def library_source() -> str:
    """The queue's Lua source, its VERSION stamped with a digest of the text (see
    ``capability_router.libraries``)."""
    return stamped_source("capability_router", "lua/emp.lua")


def library_version(source: str | None = None) -> str:
    """The stamped VERSION of the Lua source."""
    return source_version(source or library_source())


def ensure_library(client: redis.Redis) -> bool:
    """Load the library unless the server (every master) has this version or a newer
    release; True if loaded.

    A load replaces another library, maybe one before release 19 (after a
    ``FUNCTION FLUSH`` an old machine may have loaded its own for a while) that
    filed jobs without the per-family pending index: every pool is marked not
    indexed, so the next ``family_summary`` files them."""
    loaded = load_unless_newer(client, library_source(), "emp_version")
    if loaded:
        for namespace in known_namespaces(client):
            client.hdel(Keys(namespace).config, "family_index")
    return loaded


#: Replies of a cluster node that mean "not here, not now": follow through the client.
CLUSTER_REDIRECTS = (AskError, TryAgainError, ClusterDownError)  # AskError covers MovedError

#: Beyond this many held connections per client, calls use its pool as usual.
MAX_HELD_CONNECTIONS = 64


def _held_by(client: Any) -> dict[tuple[int, int, str], Any]:
    held = client.__dict__.get("_emp_held")
    if held is None:
        held = client.__dict__["_emp_held"] = {}
    return held


def held_connection(client: Any, slot_key: str = "") -> Any:
    """This thread's own connection of ``client``'s pool (None: use the client).

    Kept on the client, per process and thread, so a fork or another thread
    never shares it. On a cluster, one per master: the one serving
    ``slot_key`` as far as the client knows (a MOVED reply makes the caller
    go through the client, which follows it and re-reads the slot map).
    """
    node_name = ""
    if is_green():  # a greenlet per request: a connection held per "thread" would leak
        return None
    if is_cluster_client(client):
        if not slot_key:
            return None
        node = node_for_key(client, slot_key)
        pool, node_name = client.get_redis_connection(node).connection_pool, node.name
    else:
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return None
    held = _held_by(client)
    key = (os.getpid(), threading.get_ident(), node_name)
    connection = held.get(key)
    if connection is None:
        if len(held) >= MAX_HELD_CONNECTIONS:
            return None
        # Outside the pool's count: held for good, they would exhaust its
        # max_connections (kombu's is 10) once more threads than that publish.
        connection = held[key] = pool.connection_class(**pool.connection_kwargs)
    return connection


def release_connection(client: Any) -> None:
    """Drop this thread's held connection(s) of ``client`` (after an error)."""
    held = _held_by(client)
    me = (os.getpid(), threading.get_ident())
    for key in [k for k in list(held) if k[:2] == me]:
        connection = held.pop(key, None)
        if connection is not None:
            connection.disconnect()


#: Largest result kept whole in the job record and its event, bytes of JSON
#: (``EMP_MAX_RESULT_BYTES``); Celery's result backend keeps the full value.
MAX_RESULT_BYTES = env_int("EMP_MAX_RESULT_BYTES", 64 * 1024)


def submittable_job_id(job_id: str) -> str:
    """``job_id``, or InvalidJob when it cannot be a job's key (``check_job_id``): what an
    enqueue refuses, asked by an eager call too (``EmpTask``), which enqueues nothing."""
    try:
        return check_job_id(job_id)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None


def enqueue_replicas() -> int:
    """Replicas an enqueue waits for (``WAIT``) before it counts as accepted.

    ``EMP_ENQUEUE_REPLICAS``; default 1 on a cluster (a master's replica
    takes over when it dies, so an accepted job must be on it), else 0.
    """
    return env_at_least("EMP_ENQUEUE_REPLICAS", 1 if cluster_enabled() else 0, 0, int)


#: Longest wait for the replicas of ``enqueue_replicas``, ms (``EMP_ENQUEUE_WAIT_MS``,
#: at least 1: Redis's ``WAIT`` takes 0 as "for ever"). The WAIT itself is capped at
#: half the socket timeout (``block_ms``): a longer one made every enqueue that met a
#: slow replica a TimeoutError, retried for ``ENQUEUE_RETRY_SECONDS``, not NotReplicated.
ENQUEUE_WAIT_MS = env_at_least("EMP_ENQUEUE_WAIT_MS", 1000, 1, int)

#: Seconds an enqueue that met a dead or moved master keeps retrying (a failover
#: takes cluster-node-timeout plus an election).
ENQUEUE_RETRY_SECONDS = 10.0


#: A lone surrogate: how Python holds an undecodable byte (``surrogateescape``, as in
#: non-UTF-8 file names); no UTF-8 encoder takes it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with lone surrogates as U+FFFD: redis-py cannot encode them (an error
    text holding one raised UnicodeEncodeError, and the failure went unrecorded)."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _storable(value: Any) -> Any:
    """``value`` with NaN and infinities as None and lone surrogates as U+FFFD, in
    strings, dict keys, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: _storable(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as strict JSON for the record and its events: NaN and infinities (an ML
    job's loss, say) become null, lone surrogates U+FFFD. The library's JSON encoder
    refuses the first and its decoder the escapes of the second (a progress report
    raised inside the task), and a stored bare ``NaN`` is no JSON readers take."""
    try:
        text = json.dumps(value, default=repr, allow_nan=False)
        if "\\ud" not in text:  # no surrogate escape (json.dumps writes lowercase hex)
            return text
    except ValueError:
        pass
    return json.dumps(_storable(value), default=repr, allow_nan=False)


def result_summary(result: Any, limit: int = MAX_RESULT_BYTES) -> str:
    """The result as JSON, or a marked preview when it is over ``limit`` bytes."""
    text = json_text(result)
    if len(text) <= limit:
        return text
    return json.dumps({"truncated": True, "bytes": len(text), "preview": text[:1024]})


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Claimed:
    """A job handed to a worker by ``claim``."""

    job_id: str
    attempt: int
    message: str


#: Config fields of warm-first claims (``emp_claim``; defaults in emp.lua's ``config``).
AFFINITY_SETTINGS = ("affinity", "affinity_window", "affinity_max_delay_ms",
                     "load_ms_ram", "load_ms_disk", "load_ms_remote")

#: Classes ``emp_queue_summary`` reports per call.
SUMMARY_CHUNK = 100


@dataclass
class PendingClass:
    """One requirement class with pending jobs, as ``emp_queue_summary`` sees it.

    ``head_score`` is the order score of the class's next job (text, exact);
    ``oldest_ms`` the oldest effective time among its pending jobs, which is
    not the head's when a newer job has a higher priority.
    """

    signature: str
    pending: int
    head_score: str
    oldest_ms: int


@dataclass
class PendingFamily:
    """One family with pending jobs, from the per-family pending index
    (``emp_family_summary``); ``family`` is a class signature for a class filed
    without a family."""

    family: str
    pending: int
    oldest_ms: int


@dataclass
class QueueSummary:
    """Pending work of one namespace: classes in head order, and delayed jobs."""

    classes: list[PendingClass]
    delayed: int
    #: Classes with pending jobs when the (last) page was read.
    total_classes: int = 0


class QueueFunctions:
    """Named wrappers around the library's functions for one namespace.

    :param client: a redis-py client (``decode_responses`` either way).
    :param namespace: the queue namespace (pool).
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.namespace = namespace
        #: Replicas each enqueue waits for; 0 sends no WAIT.
        self.replicas = enqueue_replicas()

    def _call(self, name: str, keys: list[str], args: list[Any], read_only: bool = False) -> Any:
        command = ("FCALL_RO" if read_only else "FCALL", name, len(keys), *keys, *args)
        try:
            return self._send(command)
        except redis.ResponseError as exc:
            if "Function not found" not in str(exc):
                raise
        ensure_library(self.client)
        return self._send(command)

    def _call_replicated(self, job_id: str, name: str, keys: list[str], args: list[Any]) -> Any:
        """FCALL, then ``WAIT replicas timeout`` on the same connection; NotReplicated
        when fewer replicas confirm.

        Replication is asynchronous: without the WAIT a master that dies right
        after replying takes the job with it. A call that meets a dead or moved
        master retries (re-reading the slot map) until a replica has taken
        over; a retry that finds the job filed means the first call did it.
        """
        command = ("FCALL", name, len(keys), *keys, *args)
        deadline = monotonic() + ENQUEUE_RETRY_SECONDS
        retried, pause = False, 0.05
        while True:
            try:
                reply, acked = self._send_with_wait(command)
                break
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                error: Exception = exc
            except redis.ResponseError as exc:
                text = str(exc)
                if "Function not found" in text:
                    ensure_library(self.client)
                elif not isinstance(exc, CLUSTER_REDIRECTS):
                    raise
                error = exc
            if monotonic() > deadline:
                raise error
            sleep(pause)
            pause = min(pause * 2, 0.5)
            retried = True
            if is_cluster_client(self.client):
                try:
                    refresh_slots(self.client)
                except (redis.RedisError, OSError):
                    pass  # no live seed yet; the next try reads the map again
        if retried and _text(reply[0]) == "duplicate":
            return ["queued"]  # the call that failed had filed it
        if _text(reply[0]) in ("queued", "delayed") and int(acked) < self.replicas:
            raise NotReplicated(job_id, self.replicas, int(acked))
        return reply

    def _send_with_wait(self, command: tuple[Any, ...]) -> tuple[Any, Any]:
        """Send ``command`` and WAIT together on this thread's connection to the key's master."""
        wait = ("WAIT", self.replicas, block_ms(ENQUEUE_WAIT_MS))
        connection = held_connection(self.client, self.keys.config)
        if connection is None:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command(*wait)
                return tuple(pipe.execute())
        try:
            connection.send_packed_command(connection.pack_commands([command, wait]))
            try:
                reply = connection.read_response()
            except redis.ResponseError:
                connection.read_response()  # the WAIT's reply, so the connection stays in step
                raise
            return reply, connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            release_connection(self.client)
            raise

    def _send(self, command: tuple[Any, ...]) -> Any:
        """Run one command on this thread's held connection.

        Every job state change is one of these calls, on the hot path of
        producers and workers; a held connection halves redis-py's per-call
        CPU (no pool checkout, no retry wrapper). A connection error drops it
        and the command goes through the client, with its usual retries: a held
        connection outlives a Redis restart, which resets it.

        A timeout drops it too but is not retried on one Redis: the server got the
        command and did not answer in time (hung, stopped, partitioned), so a retry
        only waited another socket timeout (a call cost 10 s) and sent the command
        again, which the server ran twice once it went on (two progress events for
        one report). A cluster client still gets it: it re-reads the slot map, and a
        failover may have replaced the master that hung.
        """
        connection = held_connection(self.client, self.keys.config)
        if connection is None:
            return self.client.execute_command(*command)
        try:
            connection.send_command(*command)
            return connection.read_response()
        except (redis.TimeoutError, TimeoutError):
            release_connection(self.client)
            if not is_cluster_client(self.client):
                raise
            return self.client.execute_command(*command)
        except (redis.ConnectionError, OSError):
            release_connection(self.client)
            return self.client.execute_command(*command)
        except redis.ResponseError as exc:
            if not isinstance(exc, CLUSTER_REDIRECTS):
                raise
            release_connection(self.client)  # the slot moved (failover, resharding)
            return self.client.execute_command(*command)

    def configure(self, **settings: float) -> None:
        """Set namespace tunables: events_maxlen, job_events_maxlen, retention_ms,
        max_attempts, max_service_releases, service_release_delay_ms,
        profile_retention_ms, fair_window, fair_age_ms, duration_keys_max (integers),
        duration_alpha (0-1, the duration model's EWMA weight), and warm-first claims:
        affinity (1 on, 0 off), affinity_window, affinity_max_delay_ms,
        load_ms_ram, load_ms_disk, load_ms_remote (see emp.lua)."""
        allowed = {"events_maxlen", "job_events_maxlen", "retention_ms", "max_attempts",
                   "max_service_releases", "service_release_delay_ms", "profile_retention_ms",
                   "fair_window", "fair_age_ms", "duration_keys_max", *AFFINITY_SETTINGS}
        fractions = {"duration_alpha"}
        unknown = set(settings) - allowed - fractions
        if unknown:
            raise ValueError(f"unknown queue setting(s): {', '.join(sorted(unknown))}")
        for name in fractions & set(settings):
            if not 0 < float(settings[name]) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {settings[name]!r}")
        if settings:
            self.client.hset(self.keys.config, mapping={
                k: float(v) if k in fractions else int(v) for k, v in settings.items()})

    def register_worker(self, profile: WorkerProfile, now_ms: int | None = None) -> int:
        """Register a capability profile; returns how many live families it can serve."""
        k = self.keys
        return int(self._call(
            "emp_register_worker", [k.config, k.profiles, k.classes],
            [profile.signature, profile.to_json(), now_ms or 0],
        ))

    def enqueue_call(
        self, job_id: str, spec: JobSpec | dict[str, Any], message: str,
        due_ms: int = 0, now_ms: int | None = None, id_token: str = "",
    ) -> tuple[str, list[str], list[Any]]:
        """(function, KEYS, ARGV) of an enqueue, for pipelines that file many jobs.

        ``id_token``: the token of the id's reservation (``job_id_reservations``),
        whose filing a submit that took the id over has fenced out of this pool.
        InvalidJob for a job id that cannot be a key of its own (``submittable_job_id``)."""
        submittable_job_id(job_id)
        header = spec.header() if isinstance(spec, JobSpec) else spec
        k = self.keys
        fields = [x for pair in header["fields"].items() for x in pair]
        keys = [k.config, k.job(job_id), k.classes, k.profiles]
        if id_token:
            keys.append(k.id_fence(job_id))
            fields += ["id_token", id_token]
        return (
            "emp_enqueue", keys,
            [job_id, header["class"], header["class_json"], header["priority"], due_ms,
             message, now_ms or 0, "" if header.get("at") is None else header["at"],
             header.get("family", ""), header.get("family_json", ""), *fields],
        )

    def enqueue(
        self, job_id: str, spec: JobSpec | dict[str, Any], message: str,
        due_ms: int = 0, now_ms: int | None = None, id_token: str = "",
    ) -> tuple[str, str | None]:
        """File a new job; returns ('queued'|'delayed', None), ('duplicate', status), or
        ('fenced', None) when the reservation ``id_token`` was taken over meanwhile."""
        call = self.enqueue_call(job_id, spec, message, due_ms, now_ms, id_token)
        if self.replicas:
            reply = self._call_replicated(job_id, *call)
        else:
            reply = self._call(*call)
        outcome = _text(reply[0])
        return outcome, _text(reply[1]) if len(reply) > 1 else None

    def fence_id(self, job_id: str, token: str, ms: int) -> list[str]:
        """Refuse from now on this pool's filing of ``job_id`` made under the reservation
        ``token``, unless the job is here: ['exists', status] or ['fenced']."""
        k = self.keys
        return [_text(x) for x in self._call(
            "emp_fence_id", [k.job(job_id), k.id_fence(job_id)], [token, ms])]

    def claim(
        self, profile_signature: str, worker_id: str, lease_ms: int,
        idle_ms: int = 5000, now_ms: int | None = None, was_idle: bool = True,
    ) -> Claimed | int:
        """Claim the best job this profile can serve; else ms until the next due retry (0: none).

        ``was_idle`` says the worker may hold an idle mark to clear (always
        safe to leave True).
        """
        return parse_claim(self._call(*self.claim_call(
            profile_signature, worker_id, lease_ms, idle_ms, now_ms, was_idle)))

    def claim_call(
        self, profile_signature: str, worker_id: str, lease_ms: int,
        idle_ms: int = 5000, now_ms: int | None = None, was_idle: bool = True,
    ) -> tuple[str, list[str], list[Any]]:
        """(function, KEYS, ARGV) of a claim, for callers that pipeline it."""
        k = self.keys
        return ("emp_claim", [k.config, k.profiles, k.heads, k.idle],
                [profile_signature, worker_id, lease_ms, idle_ms, now_ms or 0, int(was_idle)])

    def start(
        self, job_id: str, attempt: int | str, hostname: str = "", machine_id: str = "",
        now_ms: int | None = None,
    ) -> str:
        """Mark the attempt running ('ok'), or return the status that forbids it."""
        return _text(self._call(*self.start_call(job_id, attempt, hostname, machine_id, now_ms)))

    def start_call(
        self, job_id: str, attempt: int | str, hostname: str = "", machine_id: str = "",
        now_ms: int | None = None,
    ) -> tuple[str, list[str], list[Any]]:
        """(function, KEYS, ARGV) of a start, for callers that pipeline it."""
        k = self.keys
        return ("emp_start", [k.config, k.job(job_id)],
                [job_id, attempt, hostname, now_ms or 0, machine_id])

    def progress(
        self, job_id: str, attempt: int | str, progress: float,
        details: dict[str, Any] | None = None,
    ) -> str:
        k = self.keys
        return _text(self._call("emp_progress", [k.config, k.job(job_id)],
                                [job_id, attempt, progress, json_text(details or {})]))

    def preparing(self, job_id: str, attempt: int | str, details: dict[str, Any]) -> str:
        """Record a cold start's progress (``preparing`` field, ``job_preparing`` event):
        'ok', or the status that refuses it ('cancelled' once cancelled)."""
        k = self.keys
        return _text(self._call("emp_preparing", [k.config, k.job(job_id)],
                                [job_id, attempt, json_text(details)]))

    def complete(self, job_id: str, attempt: int | str, result: Any,
                 now_ms: int | None = None, load_ms: int = 0) -> str:
        """Record success ('ok'), or return the status that refuses it (fencing).

        The run (``started_at`` to now, less ``load_ms`` spent loading models)
        teaches the duration model when the record has a ``duration_key`` and
        ``work_units``."""
        return _text(self._call(*self.complete_call(job_id, attempt, result, now_ms, load_ms)))

    def complete_call(self, job_id: str, attempt: int | str, result: Any,
                      now_ms: int | None = None, load_ms: int = 0,
                      ) -> tuple[str, list[str], list[Any]]:
        """(function, KEYS, ARGV) of a completion, for callers that pipeline it."""
        k = self.keys
        return ("emp_complete", [k.config, k.job(job_id)],
                [job_id, attempt, result_summary(result), now_ms or 0, max(0, int(load_ms))])

    def fail(self, job_id: str, attempt: int | str, error: str) -> str:
        k = self.keys
        return _text(self._call("emp_fail", [k.config, k.job(job_id)],
                                [job_id, attempt, clean_text(error)]))

    def retry(
        self, job_id: str, attempt: int | str, due_ms: int, message: str, error: str = "",
        max_retries: int | None = None,
    ) -> str:
        """File a retry; ``max_retries``, when the retry call named one, replaces the
        record's (what Celery allows from now on)."""
        k = self.keys
        return _text(self._call("emp_retry", [k.config, k.job(job_id), k.delayed],
                                [job_id, attempt, due_ms, message, clean_text(error), "",
                                 "" if max_retries is None else int(max_retries)]))

    def replace(self, job_id: str, attempt: int | str, spec: dict[str, Any], message: str,
                step: dict[str, Any], due_ms: int = 0) -> str:
        """Refile the job as the replacement its attempt's task asked for (Celery's
        ``Task.replace``): its message ``message``, class and record fields from the
        replacement's job ``spec`` (a header), ``step`` (from_task, to_task) added to its
        ``replaced`` history. 'queued' or 'delayed', or the status that refused it."""
        k = self.keys
        fields = [x for pair in spec["fields"].items() for x in pair]
        return _text(self._call("emp_replace", [k.config, k.job(job_id), k.delayed],
                                [job_id, attempt, due_ms, message, spec["class"],
                                 spec["class_json"], spec.get("family", ""),
                                 spec.get("family_json", ""), json_text(step), 0, *fields]))

    def cancel(self, job_id: str, reason: str = "cancelled by request",
               attempt: int | str | None = None) -> tuple[str, ...]:
        """Returns ('cancelled', previous status, worker id), (terminal status,) or ('missing',).

        With ``attempt``: only while that attempt holds the job, else ('stale', status).
        """
        k = self.keys
        reply = self._call("emp_cancel", [k.config, k.job(job_id), k.delayed],
                           [job_id, clean_text(reason), 0, "" if attempt is None else attempt])
        return tuple(_text(x) for x in reply)

    def resubmit(self, job_id: str, reason: str = "resubmitted by request") -> str:
        """Run a failed or cancelled job again: 'pending', or the status that refuses it."""
        k = self.keys
        return _text(self._call("emp_resubmit", [k.config, k.job(job_id)],
                                [job_id, clean_text(reason), 0,
                                 *self._class_as_filed_now(job_id)]))

    def escalate(self, job_id: str, attempt: int | str, requirements: dict[str, Any],
                 step: dict[str, Any], max_steps: int) -> str:
        """File a job that ran out of memory again under ``requirements`` (raised), the
        step recorded in ``escalations``: 'queued', 'exhausted' (``max_steps`` taken,
        nothing changed) or the status that refuses it. InvalidJob when the raised
        requirements do not make a class."""
        k = self.keys
        filed = self._class_as_filed_now(job_id, requirements)
        if not filed:
            raise InvalidJob(f"job {job_id}: no class from requirements {requirements!r}")
        return _text(self._call("emp_escalate", [k.config, k.job(job_id)],
                                [job_id, attempt, json_text(step), max_steps,
                                 json.dumps(requirements), *filed]))

    def _class_as_filed_now(self, job_id: str,
                            requirements: dict[str, Any] | None = None) -> list[str]:
        """The job's class and family rebuilt from its record (the class may be gone),
        with ``requirements`` instead of the record's when given."""
        fields = self.client.hmget(self.keys.job(job_id), "service_required", "requirements",
                                   "customer_id", "workflow_id")
        service, recorded, customer, workflow = (_text(v) if v is not None else None
                                                 for v in fields)
        if not service:
            return []
        try:
            if requirements is None:
                requirements = json.loads(recorded or "null")
            # No pool: a class does not depend on it, and a pool a new job may not name
            # ('..', made before that was refused) still holds jobs to resubmit.
            spec = JobSpec(service=service, requirements=requirements,
                           customer_id=customer, workflow_id=workflow)
        except (InvalidJob, ValueError):
            return []  # the record's own class is filed again as it is
        return [spec.class_signature, spec.class_json, spec.family_signature, spec.family_json]

    def ack(self, acks: list[tuple[str, int | str]], now_ms: int | None = None) -> int:
        """Acknowledge attempts; returns how many ended without an outcome (now failed)."""
        if not acks:
            return 0
        flat = [x for pair in acks for x in pair]
        return int(self._call("emp_ack", [self.keys.config], [now_ms or 0, *flat]))

    def requeue(self, job_id: str, attempt: int | str, reason: str) -> str:
        k = self.keys
        return _text(self._call("emp_requeue", [k.config, k.job(job_id)],
                                [job_id, attempt, clean_text(reason)]))

    def release(self, job_id: str, attempt: int | str, reason: str,
                now_ms: int | None = None) -> str:
        """Give back an attempt its service refused, spending no retry (see emp_release).

        Returns 'delayed' or 'queued', 'exhausted' when the job used up its
        releases (nothing changed: count the failure as usual), or the status
        that refuses it (fencing).
        """
        k = self.keys
        return _text(self._call("emp_release", [k.config, k.job(job_id), k.delayed],
                                [job_id, attempt, clean_text(reason), now_ms or 0]))

    def unclaim(self, worker_id: str, held: list[str], now_ms: int | None = None) -> list[str]:
        """Give back the jobs assigned to ``worker_id`` that it does not hold: a claim
        whose reply it never received (see emp_unclaim). Returns their ids."""
        return [_text(job_id) for job_id in self._call(
            "emp_unclaim", [self.keys.config], [worker_id, now_ms or 0, *held])]

    def renew(
        self, worker_id: str, lease_ms: int, held: list[tuple[str, int | str]]
    ) -> list[str]:
        """Extend leases; returns the job ids this worker no longer holds."""
        if not held:
            return []
        k = self.keys
        flat = [x for pair in held for x in pair]
        reply = self._call("emp_renew", [k.config, k.leases], [worker_id, lease_ms, 0, *flat])
        return [_text(x) for x in reply]

    def purge(self, reason: str = "purged by Celery's purge") -> int:
        """Cancel every job pending now (due later included); returns how many were.

        Celery's purge drops a queue's waiting messages; here each job ends cancelled,
        by one ``emp_cancel`` call, so its record and events say so. A job that moved on
        meanwhile (claimed, cancelled) is left as it is.
        """
        ids = self.client.zrange(self.keys.status_index("pending"), 0, -1)
        return sum(self.cancel(_text(job_id), reason)[0] == "cancelled" for job_id in ids)

    def pending_count(self) -> int:
        """Jobs waiting to be claimed (due retries included once promoted)."""
        classes = self.client.zrange(self.keys.heads, 0, -1)
        with self.client.pipeline(transaction=False) as pipe:
            for csig in classes:
                pipe.zcard(self.keys.pending(_text(csig)))
            return sum(pipe.execute())

    def queue_summary_call(self, first: int = 0, count: int = SUMMARY_CHUNK
                           ) -> tuple[str, list[str], list[Any]]:
        """(function, KEYS, ARGV) of one page of ``emp_queue_summary`` (read-only)."""
        k = self.keys
        return "emp_queue_summary", [k.config, k.heads, k.delayed], [first, count]

    def queue_summary(self, chunk: int = SUMMARY_CHUNK) -> QueueSummary:
        """Classes with pending jobs (count, head score, oldest ms) and the delayed count.

        Read ``chunk`` classes per call, so a long list never holds the server
        for long; classes that move between calls are reported once.
        """
        classes: dict[str, PendingClass] = {}
        first = 0
        while True:
            page = parse_queue_summary(
                self._call(*self.queue_summary_call(first, chunk), read_only=True))
            for pending_class in page.classes:
                classes.setdefault(pending_class.signature, pending_class)
            first += chunk
            if first >= page.total_classes:
                return QueueSummary(list(classes.values()), page.delayed, page.total_classes)

    def family_summary(self) -> list[PendingFamily]:
        """Families with pending jobs (count, oldest effective ms): O(families).

        Jobs a release before 19 left pending are filed in the index first
        (once per pool, ``index_families``)."""
        reply = self._call("emp_family_summary", [self.keys.config], [], read_only=True)
        if int(reply[0]) != 1:
            self.index_families()
            reply = self._call("emp_family_summary", [self.keys.config], [], read_only=True)
        return [PendingFamily(_text(family), int(pending), int(_text(oldest)))
                for family, pending, oldest in reply[1:]]

    def index_families(self, chunk: int = SUMMARY_CHUNK) -> None:
        """File every pending job in the per-family pending index, ``chunk`` classes
        a call; the last call marks the pool indexed. The classes are listed after
        the library is loaded (``emp_family_summary`` loaded it), so a job filed
        since is indexed by ``file_pending`` itself."""
        classes = [_text(c) for c in self.client.zrange(self.keys.heads, 0, -1)]
        for first in range(0, max(len(classes), 1), chunk):
            last = "1" if first + chunk >= len(classes) else "0"
            self._call("emp_index_families", [self.keys.config],
                       [last, *classes[first:first + chunk]])

    def residency(
        self, worker_id: str, changes: list[tuple[str, str, int | None]] = (),
        mode: str = "update", profile_signature: str = "", now_ms: int | None = None,
    ) -> tuple[int, int, int]:
        """Report a worker's model residency (``emp_residency``): (model, tier, size bytes)
        triples, tier "" dropping the model; returns (loaded, evicted, held)."""
        reply = self._call(*self.residency_call(worker_id, changes, mode, profile_signature,
                                                now_ms))
        return int(reply[0]), int(reply[1]), int(reply[2])

    def residency_call(
        self, worker_id: str, changes: list[tuple[str, str, int | None]] = (),
        mode: str = "update", profile_signature: str = "", now_ms: int | None = None,
    ) -> tuple[str, list[str], list[Any]]:
        """(function, KEYS, ARGV) of a residency report, for callers that pipeline it."""
        args: list[Any] = [worker_id, now_ms or 0, profile_signature, mode]
        for model, tier, size in changes:
            args += [model, tier, "" if size is None else int(size)]
        return "emp_residency", [self.keys.config], args

    def models_held(self, service: str, models: list[str]) -> set[str]:
        """Which of ``models`` the pool has while a worker of it is live: reported by a
        live worker, or offered for ``service`` by a registered profile."""
        return {_text(m) for m in self._call("emp_models_held", [self.keys.config],
                                             [0, service, *models], read_only=True)}

    def take_gave_up(self, count: int = 100) -> list[str]:
        """Up to ``count`` ids of jobs the queue failed on its own (attempts used up with
        no run holding them), each handed out once, to be reported where no run could."""
        return [_text(x) for x in self.client.lpop(self.keys.gave_up, count) or []]

    def sweep(self, limit: int = 100, now_ms: int | None = None) -> int:
        """Promote due retries and requeue expired leases now."""
        return int(self._call("emp_sweep", [self.keys.config], [limit, now_ms or 0]) or 0)


def parse_claim(reply: list[Any]) -> Claimed | int:
    """Turn a raw emp_claim reply into ``Claimed`` or the ms until work may be due."""
    if int(reply[0]) == 1:
        return Claimed(_text(reply[1]), int(reply[2]), _text(reply[3]))
    return int(reply[1])


def parse_queue_summary(reply: list[Any]) -> QueueSummary:
    """Turn a raw emp_queue_summary reply into ``QueueSummary``."""
    classes = [
        PendingClass(_text(csig), int(pending), _text(head), int(_text(oldest)))
        for csig, pending, head, oldest in reply[2:]
    ]
    return QueueSummary(classes, int(reply[0]), int(reply[1]))


def claim_args(
    keys: Keys, profile_signature: str, worker_id: str, lease_ms: int, idle_ms: int,
    was_idle: bool = True, acks: list[tuple[str, int | str]] = (),
) -> list[Any]:
    """The FCALL command of a claim (acknowledging ``acks`` first), for callers that send it."""
    return ["FCALL", "emp_claim", 4, keys.config, keys.profiles, keys.heads, keys.idle,
            profile_signature, worker_id, lease_ms, idle_ms, 0, int(was_idle),
            *(x for pair in acks for x in pair)]
