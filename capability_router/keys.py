"""Every Redis key name of the project, built in one place.

All keys of one queue namespace (a pool) share the hash tag ``{<namespace>}``
so the Redis Function library runs on Redis Cluster. The Lua library derives
a few per-job keys from the same layout; its header repeats it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: First segment of every key.
PREFIX = "emp"

#: Namespace used when a job names no pool.
DEFAULT_NAMESPACE = "default"

#: Minute slots of the pool observability ring (25 h); ``emp.lua`` repeats it.
OBS_SLOTS = 1500

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_KEY_RE = re.compile(r"^" + PREFIX + r":\{(?P<ns>[^}]+)\}:(?P<rest>.+)$")


def check_namespace(namespace: str) -> str:
    """Return the namespace, or raise ValueError naming what is wrong with it."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise ValueError(
            f"invalid pool name {namespace!r}: use 1-64 letters, digits, '_', '-' or '.'"
        )
    return namespace


#: Pool names a URL path cannot carry: HTTP clients drop such a segment (RFC 3986 5.2.4).
DOT_SEGMENTS = (".", "..")


def check_new_pool(name: str, field: str | None = "pool") -> str:
    """Return ``name`` if a new pool may take it, else raise ValueError naming ``field``
    (None: the caller names it).

    Beyond ``check_namespace``: '.' and '..' are refused, since ``/api/pools/../metrics``
    can never reach such a pool. ``check_namespace`` still accepts them, so every reader
    of all pools keeps working where a Redis already holds one.
    """
    where = f"{field}: " if field else ""
    if name in DOT_SEGMENTS:
        raise ValueError(
            f"{where}{name!r} cannot be a pool name: HTTP clients drop a '.' or '..' path "
            "segment, so /api/pools/<pool> could never reach it"
        )
    try:
        return check_namespace(name)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None


def namespace_prefix(namespace: str) -> str:
    """Return ``emp:{<namespace>}:``, the start of every key of a namespace."""
    return f"{PREFIX}:{{{check_namespace(namespace)}}}:"


@dataclass(frozen=True)
class Keys:
    """Key names of one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    @property
    def prefix(self) -> str:
        return namespace_prefix(self.namespace)

    @property
    def config(self) -> str:
        return self.prefix + "config"

    @property
    def events(self) -> str:
        return self.prefix + "events"

    @property
    def jobs(self) -> str:
        return self.prefix + "jobs"

    @property
    def classes(self) -> str:
        return self.prefix + "classes"

    @property
    def class_family(self) -> str:
        """Class signature -> its family's (what matching reads; see ``emp.lua``)."""
        return self.prefix + "class-family"

    @property
    def families(self) -> str:
        """Family signature -> family JSON (what matching reads of a class)."""
        return self.prefix + "families"

    def family_classes_pending(self, family_signature: str) -> str:
        """The family's classes with pending jobs -> the score of their best job."""
        return f"{self.prefix}fam:{family_signature}"

    @property
    def profiles(self) -> str:
        return self.prefix + "profiles"

    @property
    def heads(self) -> str:
        return self.prefix + "heads"

    @property
    def delayed(self) -> str:
        return self.prefix + "delayed"

    @property
    def leases(self) -> str:
        return self.prefix + "leases"

    @property
    def gave_up(self) -> str:
        """Ids of jobs the queue failed with no run to report it (``emp.lua``)."""
        return self.prefix + "gave-up"

    @property
    def idle(self) -> str:
        return self.prefix + "idle"

    @property
    def durations(self) -> str:
        """Duration model: duration key -> "<EWMA of ln s/unit>,<runs>" (``emp.lua``)."""
        return self.prefix + "durations"

    @property
    def duration_seen(self) -> str:
        return self.prefix + "duration-seen"

    @property
    def load(self) -> str:
        """``unfinished_ms`` / ``unfinished``: predicted work not yet done (``emp.lua``)."""
        return self.prefix + "load"

    @property
    def workers(self) -> str:
        """Live workers serving the namespace: worker id -> ms their heartbeat expires."""
        return self.prefix + "workers"

    @property
    def residents(self) -> str:
        """Worker id -> profile signature, of workers that report a model residency."""
        return self.prefix + "residents"

    @property
    def busy(self) -> str:
        """Worker id -> ms its running job is expected to end (warm-first delays)."""
        return self.prefix + "busy"

    @property
    def model_sizes(self) -> str:
        """Model -> bytes, as reported with a residency."""
        return self.prefix + "model-size"

    @property
    def obs(self) -> str:
        """Pool observability state: where the minute integrals go on from (``emp.lua``)."""
        return self.prefix + "obs"

    def obs_minute(self, minute: int) -> str:
        """The ring slot holding one minute's pool observations (field ``m``: which minute)."""
        return f"{self.prefix}obs:{minute % OBS_SLOTS}"

    @property
    def directives(self) -> str:
        """Placement directives to the pool's workers (a stream; ``prediction.directives``)."""
        return self.prefix + "directives"

    @property
    def desired(self) -> str:
        """Desired machines of the pool (a string, written by the intelligence leader)."""
        return self.prefix + "desired"

    @property
    def forecast(self) -> str:
        """The leader's forecast for the pool: ``arrival_rate``, ``mean_job_seconds``, ``at``."""
        return self.prefix + "forecast"

    def directive_taken(self, directive_id: str) -> str:
        """Which worker took a directive addressed to any idle worker (SET NX, expires)."""
        return f"{self.prefix}directive-taken:{directive_id}"

    def models(self, worker_id: str) -> str:
        """One worker's residency: model -> tier (gpu, ram, disk, remote)."""
        return f"{self.prefix}models:{worker_id}"

    def warm(self, model: str) -> str:
        """Workers holding ``model`` in the GPU -> ms of their report."""
        return f"{self.prefix}warm:{model}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}{JOB_EVENTS_SUFFIX}"

    def id_fence(self, job_id: str) -> str:
        """Token of a reservation of ``job_id`` taken from this pool: its filing is refused
        here (``capability_router.job_id_reservations``)."""
        return f"{self.prefix}id-fence:{job_id}"

    def pending(self, class_signature: str) -> str:
        return f"{self.prefix}pending:{class_signature}"

    def compat(self, profile_signature: str) -> str:
        return f"{self.prefix}compat:{profile_signature}"

    def wake(self, worker_id: str) -> str:
        return f"{self.prefix}wake:{worker_id}"

    def status_index(self, status: str) -> str:
        """Listing index of one job state: job id -> ms it entered the state."""
        return f"{self.prefix}status:{status}"

    def field_index(self, field: str, value: str) -> str:
        """Listing index of one ``service``, ``customer`` or ``workflow``: id -> submit ms."""
        return f"{self.prefix}by:{field}:{value}"


#: What a job's event stream adds to its record's key (``emp.lua`` repeats it).
JOB_EVENTS_SUFFIX = ":events"


def check_job_id(job_id: str) -> str:
    """Return the job id, or raise ValueError naming what is wrong with it.

    A job's record is ``job:<id>`` and its event stream ``job:<id>:events``: an id
    ending in ``:events`` would be the stream of job ``<id>`` (one job's writes
    failing half way on the other's key), so it is refused, as is an empty id.
    """
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"invalid job id {job_id!r}: it must be non-empty text")
    if job_id.endswith(JOB_EVENTS_SUFFIX):
        raise ValueError(
            f"invalid job id {job_id!r}: it may not end in {JOB_EVENTS_SUFFIX!r} "
            "(the key of another job's event stream)"
        )
    return job_id


def key_for(namespace: str) -> Keys:
    """Return the key builder of a namespace."""
    check_namespace(namespace)
    return Keys(namespace)


def parse_key(key: str) -> tuple[str, str]:
    """Split a key into (namespace, rest); ValueError for a foreign key."""
    match = _KEY_RE.match(key)
    if not match:
        raise ValueError(f"not an EMP key: {key!r}")
    return match["ns"], match["rest"]


#: Set of namespaces seen by producers and workers (outside any hash tag).
NAMESPACES_KEY = f"{PREFIX}:namespaces"


def job_id_reservation(job_id: str) -> str:
    """A job id's reservation: which pool files it (``job_id_reservations``). No hash
    tag: ids spread over the slots, apart from every pool's keys."""
    return f"{PREFIX}:job-id:{job_id}"


#: The model catalog, HASH model name -> JSON {url, size, sha256}
#: (``capability_router.catalog``). Its own hash tag: one slot on a cluster.
MODEL_CATALOG_KEY = f"{PREFIX}:{{models}}:catalog"


#: The intelligence service's leader lease: the token of the instance that leads.
INTELLIGENCE_LEADER_KEY = f"{PREFIX}:{{intelligence}}:leader"


def known_namespaces(client: Any) -> list[str]:
    """Every pool ever used (a Redis client's view): the default first, then by name."""
    return namespaces_of(client.smembers(NAMESPACES_KEY))


def namespaces_of(members: Any) -> list[str]:
    """``known_namespaces`` from the members of ``NAMESPACES_KEY`` already read."""
    seen = {_text(n) for n in members}
    return [DEFAULT_NAMESPACE, *sorted(seen - {DEFAULT_NAMESPACE})]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_idle_member(member: str) -> tuple[str, str]:
    """(profile signature, worker id) of an ``idle`` zset member (built by emp_claim)."""
    profile_signature, _, worker_id = member.partition(":")
    return profile_signature, worker_id


def idle_workers(members: list[str]) -> set[str]:
    """Worker ids of ``idle`` zset members."""
    return {parse_idle_member(m)[1] for m in members}
