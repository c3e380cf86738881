"""The pools file: specialized pools as configuration (``conf/pools.toml``).

A pool is a queue namespace with a machine profile (CPU only, or a range of
GPU memory), a storage budget, the run times it is for, the services and
models its machines run, and a price. The file also holds the duration
model's priors (``[priors]``) and the router's tunables (``[routing]``).
Routing is on only when ``EMP_POOLS_FILE`` names a file; every error names
the file and the field, and a bad file is refused whole.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capability_router.errors import PoolsFileError
from capability_router.keys import check_new_pool
from capability_router.prediction.scaler import ScalingPolicy

logger = logging.getLogger(__name__)

#: Environment variable naming the pools file; unset, routing is off.
POOLS_FILE_ENV = "EMP_POOLS_FILE"

#: The shipped default pools (fast, standard, heavy).
DEFAULT_POOLS_FILE = Path(__file__).resolve().parent.parent / "conf" / "pools.toml"

#: ``services`` entry meaning "any service".
ANY_SERVICE = "*"


@dataclass(frozen=True)
class Pool:
    """One pool: what its machines are and which jobs it is for."""

    name: str
    description: str
    #: False: CPU-only machines.
    gpu: bool
    #: (min, max) GB of GPU memory of its machines; (0, 0) without GPU.
    gpu_memory_gb: tuple[float, float]
    #: Disk budget for models on each machine, GB.
    storage_gb: float
    #: (min, max) predicted run time, seconds, of the jobs it is for.
    durations_seconds: tuple[float, float]
    #: Services its machines run; ``("*",)`` for any.
    services: tuple[str, ...]
    #: Models its machines load before any job asks.
    preload_models: tuple[str, ...] = ()
    #: Cost of one of its machines per hour.
    price_per_hour: float = 0.0
    #: Size rank, small to big: spill-over goes only to a higher order.
    order: int = 0
    #: Elastic scaling bounds and targets (``[pools.<name>.scaling]``).
    scaling: ScalingPolicy = field(default_factory=ScalingPolicy)

    def runs_service(self, service: str) -> bool:
        """True when its machines run ``service``."""
        return ANY_SERVICE in self.services or service in self.services

    def fits_duration(self, seconds: float) -> bool:
        """True when a job predicted to run ``seconds`` is one this pool is for."""
        low, high = self.durations_seconds
        return low <= seconds <= high

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (``/api/pools``)."""
        return {
            "name": self.name, "description": self.description, "order": self.order,
            "gpu": self.gpu, "gpu_memory_gb": list(self.gpu_memory_gb),
            "storage_gb": self.storage_gb, "durations_seconds": list(self.durations_seconds),
            "services": list(self.services), "preload_models": list(self.preload_models),
            "price_per_hour": self.price_per_hour, "scaling": scaling_dict(self.scaling),
        }


def scaling_dict(policy: ScalingPolicy) -> dict[str, Any]:
    """A pool's scaling settings as the pools file spells them."""
    return {name: getattr(policy, name) for name in _SCALING_FIELDS}


@dataclass(frozen=True)
class Priors:
    """Seconds per work unit predicted for a kind of job never seen completing."""

    #: For a service the file names no prior for.
    default_seconds_per_unit: float = 20.0
    #: Service -> seconds per work unit.
    services: dict[str, float] = field(default_factory=dict)

    def seconds_per_unit(self, service: str) -> float:
        return self.services.get(service, self.default_seconds_per_unit)


@dataclass(frozen=True)
class RoutingSettings:
    """The router's tunables (``[routing]``)."""

    #: A pool whose expected wait is above this many seconds is saturated.
    spill_wait_seconds: float = 10.0


@dataclass(frozen=True)
class PoolsFile:
    """Everything the pools file says."""

    path: str
    #: Pools by name, smallest order first.
    pools: dict[str, Pool]
    priors: Priors
    routing: RoutingSettings


_POOL_FIELDS = {
    "description": False, "order": False, "gpu": True, "gpu_memory_gb": True,
    "storage_gb": True, "durations_seconds": True, "services": True,
    "preload_models": False, "price_per_hour": False, "scaling": False,
}

#: ``[pools.<name>.scaling]`` fields (all optional; defaults: ScalingPolicy's).
_SCALING_FIELDS = ("min_machines", "max_machines", "workers_per_machine",
                   "wait_target_seconds", "startup_seconds", "target_utilization")


class _Reader:
    """Checks values, raising PoolsFileError that names the file and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> PoolsFileError:
        return PoolsFileError(f"{self.path}: {where} {message}")

    def table(self, where: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, got {_kind(value)}")
        return value

    def only(self, where: str, table: dict[str, Any], allowed: set[str] | dict[str, Any]) -> None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise self.fail(where, f"has unknown field(s) {', '.join(unknown)} "
                                   f"(known: {', '.join(sorted(allowed))})")

    def number(self, where: str, value: Any, low: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(where, f"must be a number, got {value!r}")
        try:  # an integer too large for a float raised OverflowError (a traceback)
            finite = math.isfinite(value)
        except OverflowError:
            finite = False
        if not finite:
            raise self.fail(where, f"must be a number, got {str(value)[:40]}")
        if value < low:
            raise self.fail(where, f"must be >= {low:g}, got {value!r}")
        return float(value)

    def positive(self, where: str, value: Any) -> float:
        number = self.number(where, value, low=-math.inf)  # one bound in the message: > 0
        if number <= 0:
            raise self.fail(where, f"must be > 0, got {value!r}")
        return number

    def span(self, where: str, value: Any) -> tuple[float, float]:
        if not isinstance(value, list) or len(value) != 2:
            raise self.fail(where, f"must be [min, max], got {value!r}")
        low, high = (self.number(where, v) for v in value)
        if low > high:
            raise self.fail(where, f"must have min <= max, got {value!r}")
        return low, high

    def names(self, where: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, f"must be a list of names, got {value!r}")
        return tuple(value)

    def integer(self, where: str, value: Any, low: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be an integer, got {value!r}")
        if value < low:
            raise self.fail(where, f"must be >= {low}, got {value!r}")
        return value

    def text(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, got {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    return type(value).__name__


def _pool(read: _Reader, name: str, raw: Any, position: int) -> Pool:
    where = f"pools.{name}"
    try:
        check_new_pool(name, None)
    except ValueError as exc:
        # Quoted, as TOML writes a key with a dot: [pools.".."] read as pools... said less.
        quoted = f"pools.{json.dumps(name)}" if "." in name else where
        raise read.fail(quoted, f"is not a usable pool name: {exc}") from None
    table = read.table(where, raw)
    read.only(where, table, _POOL_FIELDS)
    missing = [k for k, required in _POOL_FIELDS.items() if required and k not in table]
    if missing:
        raise read.fail(where, f"is missing {', '.join(missing)}")
    gpu = table["gpu"]
    if not isinstance(gpu, bool):
        raise read.fail(f"{where}.gpu", f"must be true or false, got {gpu!r}")
    memory = read.span(f"{where}.gpu_memory_gb", table["gpu_memory_gb"])
    if not gpu and memory != (0.0, 0.0):
        raise read.fail(f"{where}.gpu_memory_gb", f"must be [0, 0] when gpu = false, got "
                                                  f"{table['gpu_memory_gb']!r}")
    if gpu and memory[1] <= 0:  # a GPU pool whose machines have no GPU memory
        raise read.fail(f"{where}.gpu_memory_gb", f"must have max > 0 when gpu = true, got "
                                                  f"{table['gpu_memory_gb']!r}")
    services = read.names(f"{where}.services", table["services"])
    if not services:
        raise read.fail(f"{where}.services", "must name at least one service (or \"*\")")
    order = table.get("order", position)
    if isinstance(order, bool) or not isinstance(order, int):
        raise read.fail(f"{where}.order", f"must be an integer, got {order!r}")
    return Pool(
        name=name, description=read.text(f"{where}.description", table.get("description", "")),
        gpu=gpu, gpu_memory_gb=memory,
        storage_gb=read.positive(f"{where}.storage_gb", table["storage_gb"]),
        durations_seconds=read.span(f"{where}.durations_seconds", table["durations_seconds"]),
        services=services,
        preload_models=read.names(f"{where}.preload_models", table.get("preload_models", [])),
        price_per_hour=read.number(f"{where}.price_per_hour", table.get("price_per_hour", 0)),
        order=order, scaling=_scaling(read, f"{where}.scaling", table.get("scaling", {})),
    )


def _scaling(read: _Reader, where: str, raw: Any) -> ScalingPolicy:
    """A pool's ``scaling`` table; absent fields take ScalingPolicy's defaults."""
    table = read.table(where, raw)
    read.only(where, table, set(_SCALING_FIELDS))
    base = ScalingPolicy()
    value = {name: table.get(name, getattr(base, name)) for name in _SCALING_FIELDS}
    low = read.integer(f"{where}.min_machines", value["min_machines"])
    high = read.integer(f"{where}.max_machines", value["max_machines"])
    if low > high:
        raise read.fail(f"{where}.max_machines", f"must be >= min_machines ({low}), got {high}")
    utilization = read.positive(f"{where}.target_utilization", value["target_utilization"])
    if utilization > 1:
        raise read.fail(f"{where}.target_utilization", f"must be <= 1, got {utilization!r}")
    return ScalingPolicy(
        wait_target_seconds=read.positive(f"{where}.wait_target_seconds",
                                          value["wait_target_seconds"]),
        workers_per_machine=read.integer(f"{where}.workers_per_machine",
                                         value["workers_per_machine"], low=1),
        min_machines=low, max_machines=high, target_utilization=utilization,
        startup_seconds=read.number(f"{where}.startup_seconds", value["startup_seconds"]),
    )


def _priors(read: _Reader, raw: Any) -> Priors:
    table = read.table("priors", raw)
    read.only("priors", table, {"default_seconds_per_unit", "services"})
    services: dict[str, float] = {}
    for service, entry in read.table("priors.services", table.get("services", {})).items():
        where = f"priors.services.{service}"
        entry = read.table(where, entry)
        read.only(where, entry, {"seconds_per_unit"})
        if "seconds_per_unit" not in entry:
            raise read.fail(where, "is missing seconds_per_unit")
        services[service] = read.positive(f"{where}.seconds_per_unit", entry["seconds_per_unit"])
    default = table.get("default_seconds_per_unit", Priors.default_seconds_per_unit)
    return Priors(read.positive("priors.default_seconds_per_unit", default), services)


def _routing(read: _Reader, raw: Any) -> RoutingSettings:
    table = read.table("routing", raw)
    read.only("routing", table, {"spill_wait_seconds"})
    spill = table.get("spill_wait_seconds", RoutingSettings.spill_wait_seconds)
    return RoutingSettings(read.number("routing.spill_wait_seconds", spill))


def parse_pools(text: str, path: str = "<pools>") -> PoolsFile:
    """Parse the text of a pools file; raises PoolsFileError naming the field."""
    read = _Reader(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PoolsFileError(f"{path}: not valid TOML: {exc}") from None
    read.only("the file", data, {"pools", "priors", "routing"})
    if "pools" not in data:  # an empty file, or one whose pools are all commented out
        raise read.fail("the file", "defines no pools: add a [pools.<name>] table")
    raw_pools = read.table("pools", data["pools"])
    if not raw_pools:
        raise read.fail("pools", "must define at least one pool ([pools.<name>])")
    pools = [_pool(read, name, raw, i + 1) for i, (name, raw) in enumerate(raw_pools.items())]
    orders: dict[int, str] = {}
    for pool in pools:
        if pool.order in orders:
            raise read.fail(f"pools.{pool.name}.order",
                            f"is {pool.order}, the same as pools.{orders[pool.order]}.order")
        orders[pool.order] = pool.name
    pools.sort(key=lambda p: p.order)
    return PoolsFile(
        path=path, pools={p.name: p for p in pools},
        priors=_priors(read, data.get("priors", {})),
        routing=_routing(read, data.get("routing", {})),
    )


def unknown_services_warning(pools_file: PoolsFile, known: Iterable[str]) -> str | None:
    """One line naming the services the file's pools or priors name that are not in
    ``known`` (the app's job types), or None. A warning, not a refusal: the loader cannot
    see the job types a project registers, only a caller holding its app can."""
    known = sorted(set(known))
    named = {s for pool in pools_file.pools.values() for s in pool.services} | set(
        pools_file.priors.services)
    unknown = sorted(named - set(known) - {ANY_SERVICE})
    if not unknown:
        return None
    return (f"{pools_file.path}: service(s) {', '.join(unknown)} named in pools' services "
            f"or [priors.services] are no job type of this app (known: "
            f"{', '.join(known) or 'none'}); a typo routes no job there")


def load_pools_file(path: str | os.PathLike[str]) -> PoolsFile:
    """Read and check a pools file; raises PoolsFileError naming the file and field."""
    return load_pools_text(path)[0]


def load_pools_text(path: str | os.PathLike[str]) -> tuple[PoolsFile, str]:
    """``load_pools_file``, and the text it was read from."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PoolsFileError(f"{path}: cannot read the pools file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PoolsFileError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_pools(text, str(path)), text


def _read_text(path: str) -> str | None:
    """The file's text, None when it cannot be read (``current`` then reloads and says why)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def load_pools(path: str | os.PathLike[str]) -> dict[str, Pool]:
    """The pools of a pools file by name, smallest order first."""
    return load_pools_file(path).pools


def pools_file_from_env() -> PoolsFile | None:
    """The file ``EMP_POOLS_FILE`` names, loaded; None when it is unset (routing off)."""
    path = os.environ.get(POOLS_FILE_ENV, "").strip()
    return load_pools_file(path) if path else None


def _file_version(path: str) -> tuple[int, ...] | None:
    """What changes when the file is edited or replaced; None when it cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


#: Seconds after its modification time that a file's stat is trusted to show its next
#: edit. On a filesystem that keeps whole seconds (2 s on FAT), an edit of the same size
#: within that time leaves the stat as it was: until a read of the file comes this long
#: after its mtime, the watch reads the content too.
SETTLE_SECONDS = 2.0


class PoolsFileWatch:
    """A pools file that is re-read when it changes, for long-running processes.

    An edit that does not load (a bad field, the file gone) changes nothing: the
    last good version stays in force and the error, naming the file and the
    field, is logged once per version of the file. Only when no version ever
    loaded does ``current`` raise PoolsFileError.
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "the pools file") -> None:
        self.path = str(path)
        #: Who keeps the last good version, for the log line ("routing", ...).
        self.what = what
        self._version: tuple[int, ...] | None = None
        #: The text the version in force was read from, and when (time.time()).
        self._text: str | None = None
        self._read_at = 0.0
        self._good: PoolsFile | None = None
        self._refused: tuple[int, ...] | None | bool = False
        #: Why the file as it is now was refused while the last good version stays in
        #: force (naming the file and the field); None when the file in force is the
        #: file on disk. Set by ``current``.
        self.refusal: str | None = None

    def current(self) -> PoolsFile:
        """The file as last loaded good; re-read first when it changed (its stat, or its
        text while the stat cannot be trusted to show an edit: ``SETTLE_SECONDS``)."""
        version = _file_version(self.path)
        if self._good is not None and version is not None and version == self._version:
            if self._read_at - version[0] / 1e9 >= SETTLE_SECONDS:
                return self._good
            now, text = time.time(), _read_text(self.path)
            if text == self._text:
                self._read_at = now
                return self._good
        try:
            read_at = time.time()
            loaded, text = load_pools_text(self.path)
        except PoolsFileError as exc:
            if self._good is None:
                raise
            if self._refused != version:
                logger.error("pools file change refused, %s keeps the last good version: %s",
                             self.what, exc)
                self._refused = version
            self.refusal = str(exc)
            return self._good
        self._version, self._good, self._refused = version, loaded, False
        self._text, self._read_at = text, read_at
        self.refusal = None
        return loaded
