"""Get a job's models onto the machine's disk before it runs, reporting the cold start.

For each model the job needs that the catalog knows: hold it in use (so no
other process evicts it), and unless the complete file is there, become the
machine's one downloader of it (a file lock) or wait for the process that is,
reporting progress either way. Settings (environment):

- ``EMP_MODEL_CACHE_DIR``: the cache directory; unset, no model is downloaded.
- ``EMP_MODEL_CACHE_GB``: its byte budget in GB (10^9 bytes). Unset: the
  ``storage_gb`` of the machine's pool in the pools file (``EMP_POOLS_FILE``,
  ``MACHINE_POOL``), else 100.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from capability_router.catalog import ModelEntry, get_models
from emp_tasks import defaults
from machine.connectors.base import ConnectorError, ErrorType
from machine.counters import count_download
from machine.models.cache import ModelCache
from machine.models.download import fetch
from machine.models.settings import positive

#: Budget when neither EMP_MODEL_CACHE_GB nor a pool's storage_gb says (GB).
DEFAULT_BUDGET_GB = 100.0


@dataclass
class Preparing:
    """Where a cold start is: the ``preparing`` record field and ``job_preparing`` event."""

    model: str
    #: "remote" while downloading, "disk" once the file is there.
    tier: str
    bytes_done: int
    bytes_total: int
    eta_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Report = Callable[[Preparing], None]


class ModelManager:
    """Downloads and cache of one machine (one instance per process is enough).

    :param cache: the disk cache, or what builds it at its first use (a job that
        needs no catalog model never touches the cache's folder, so a bad one
        fails only the jobs that need it).
    :param client: Redis client that reads the catalog.
    """

    def __init__(self, cache: ModelCache | Callable[[], ModelCache], client: Any) -> None:
        self._cache = cache if isinstance(cache, ModelCache) else None
        self._build = cache if not isinstance(cache, ModelCache) else None
        self.client = client

    @property
    def cache(self) -> ModelCache:
        """The disk cache, built at the first call (ConnectorError, ``service``, when
        its folders cannot be made; tried again at the next call)."""
        if self._cache is None:
            assert self._build is not None
            self._cache = self._build()
        return self._cache

    def catalog_entries(self, names: list[str]) -> list[ModelEntry]:
        """The catalog's entries among ``names``, in their order (unknown ones skipped:
        the service itself has them, or not)."""
        found = get_models(self.client, list(names))
        return [found[name] for name in names if name in found]

    @contextmanager
    def ready(self, entries: list[ModelEntry], report: Report | None = None
              ) -> Iterator[dict[str, Path]]:
        """Every entry's file on disk and held in use until the block ends."""
        with ExitStack() as stack:
            paths = {}
            for entry in entries:
                paths[entry.name] = stack.enter_context(self._ready_one(entry, report))
            yield paths

    @contextmanager
    def _ready_one(self, entry: ModelEntry, report: Report | None) -> Iterator[Path]:
        cache = self.cache
        with cache.use(entry.name):
            if not cache.has(entry.name, entry.size, entry.sha256):
                since, waited = time.time(), []
                watch = self._watcher(entry, report)

                def waiting() -> None:
                    waited.append(True)
                    watch()

                with cache.download_lock(entry.name, waiting):
                    if not cache.has(entry.name, entry.size, entry.sha256):
                        # The download waited for failed for good: the same bytes again
                        # would fail the same way.
                        failed = cache.failure(entry.name, entry.sha256, since) if waited \
                            else None
                        if failed:
                            raise ConnectorError(f"{failed} (the download this worker "
                                                 f"waited for)", ErrorType.MODEL)
                        self._download(entry, report)
                if report is not None:
                    report(Preparing(entry.name, "disk", entry.size, entry.size, 0.0))
            cache.touch(entry.name)
            yield cache.path(entry.name)

    def _download(self, entry: ModelEntry, report: Report | None) -> None:
        part = self.cache.part(entry.name, entry.sha256)
        with self.cache.reservation(entry.name, entry.size):
            def progress(done: int, total: int, eta: float | None) -> None:
                if report is not None:
                    report(Preparing(entry.name, "remote", done, total, eta))

            if report is not None:
                done = part.stat().st_size if part.exists() else 0
                report(Preparing(entry.name, "remote", done, entry.size, None))
            had, started = _size(part), time.monotonic()
            try:
                fetch(entry.url, part, entry.size, entry.sha256, progress)
            except ConnectorError as exc:
                count_download(False, _size(part) - had, time.monotonic() - started)
                if not exc.retryable:
                    self.cache.record_failure(entry.name, entry.sha256, exc.message)
                raise
            # The part's growth: a resumed download fetched only what it lacked.
            count_download(True, entry.size - had, time.monotonic() - started)
            self.cache.install(entry.name, entry.sha256)

    def _watcher(self, entry: ModelEntry, report: Report | None) -> Callable[[], None]:
        """What a process waiting for another's download reports: the part's growth."""
        first: list[tuple[float, int]] = []
        part = self.cache.part(entry.name, entry.sha256)

        def look() -> None:
            if report is None:
                return
            try:
                done = part.stat().st_size
            except FileNotFoundError:
                done = 0
            now = time.monotonic()
            if not first:
                first.append((now, done))
            start, start_done = first[0]
            rate = (done - start_done) / (now - start) if now > start else 0
            eta = round((entry.size - done) / rate, 1) if rate > 0 else None
            report(Preparing(entry.name, "remote", done, entry.size, eta))

        return look


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def budget_bytes_from_env() -> int:
    """EMP_MODEL_CACHE_GB, else the machine pool's ``storage_gb``, else 100 GB."""
    if defaults.env("EMP_MODEL_CACHE_GB"):
        return int(positive("EMP_MODEL_CACHE_GB", DEFAULT_BUDGET_GB,
                            "a positive number of GB") * 1e9)
    storage = _pool_storage_gb()
    return int((storage if storage else DEFAULT_BUDGET_GB) * 1e9)


def _pool_storage_gb() -> float | None:
    path, pool = os.environ.get("EMP_POOLS_FILE"), os.environ.get("MACHINE_POOL")
    if not path or not pool:
        return None
    try:
        from capability_router.pools import load_pools  # the pools part of issue 13
    except ImportError:
        return None
    try:
        found = load_pools(path).get(pool)
    except Exception:  # a broken pools file is reported where it is loaded for routing
        return None
    storage = getattr(found, "storage_gb", None) if found is not None else None
    if isinstance(storage, (tuple, list)):  # a range: the machine holds to its top
        storage = storage[-1]
    return float(storage) if storage else None


_managers: dict[tuple[int, str], ModelManager] = {}


def manager_from_env(client: Any) -> ModelManager | None:
    """This process's manager for ``EMP_MODEL_CACHE_DIR`` (None when it is unset); its
    cache is built when a job first needs a catalog model."""
    root = os.environ.get("EMP_MODEL_CACHE_DIR")
    if not root:
        return None
    key = (os.getpid(), root)
    manager = _managers.get(key)
    if manager is None:
        manager = _managers[key] = ModelManager(
            lambda: ModelCache(root, budget_bytes_from_env()), client)
    return manager
