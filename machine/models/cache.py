"""The machine's model directory: files, cross-process locks, a byte budget, LRU eviction.

Layout under ``root`` (model names never start with '.', see
``capability_router.catalog``)::

    <name>                 a complete, verified model file; its mtime is its last use
    .sha256/<name>         the SHA-256 it was verified against (which version it is)
    .failed/<name>         "<sha256> <time> <error>" of its last download that failed
                           for good (for the processes that were waiting for it)
    .parts/<name>.<sha>.part  a download in progress (resumed from); when nobody is
                           downloading it, it counts in the budget and is evicted
                           like a model
    .locks/<name>.use      shared flock held by every process using the model
    .locks/<name>.download exclusive flock of the one process downloading it
    .locks/cache           exclusive flock around reserving space and evicting
    .reserved/<name>       size (bytes) a running download will take

Files without a ``.sha256`` record are not the cache's (an operator's, in a
folder shared with them): they are neither counted nor evicted, until a job
needs a model of that name and the file matches its checksum (adopted). A
cache folder from before the records (``.parts`` but no ``.sha256``) has its
files recorded as its own at first sight, ``unverified``: hashed at next use.

Locks are ``flock`` on files, so they hold across the machine's worker
processes and vanish with a process that dies. A model is *idle* when no
process holds its use lock; only idle models are evicted, least recently
used first.

A disk error on these small files (full, read-only) is the ``service`` error a
full disk gives on the model file itself, naming the file: another machine may
take the job. So is one making the folders, the first time a process uses the
cache.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from machine.connectors.base import ConnectorError, ErrorType
from machine.models.download import hash_file

_PART_RE = re.compile(r"^.+\.[0-9a-f]{16}\.part$")

#: The record of a file the cache held before it kept records: hashed at its next use.
_UNVERIFIED = "unverified"
#: Seconds between looks at a download another process runs.
WAIT_POLL_SECONDS = 0.25


class ModelCache:
    """Model files of one machine.

    :param root: the cache directory (created).
    :param budget_bytes: most bytes the model files (and running downloads) may take.
    """

    def __init__(self, root: Path | str, budget_bytes: int) -> None:
        self.root = Path(root)
        self.budget_bytes = int(budget_bytes)
        # A cache of the version without records: its files are its own, unverified.
        legacy = (self.root / ".parts").is_dir() and not (self.root / ".sha256").is_dir()
        with _setting_up(self.root):
            for sub in (".parts", ".locks", ".reserved", ".sha256", ".failed"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if legacy:
                for path in self.root.iterdir():
                    if path.is_file() and not path.name.startswith("."):
                        with open(self._sha_file(path.name), "a") as record:
                            if record.tell() == 0:
                                record.write(_UNVERIFIED)

    def path(self, name: str) -> Path:
        return self.root / name

    def part(self, name: str, sha256: str) -> Path:
        """The download in progress of one version of ``name`` (a catalog entry that
        changes its file never resumes from the old file's bytes)."""
        return self.root / ".parts" / f"{name}.{sha256[:16]}.part"

    def _lock_file(self, name: str, kind: str) -> Path:
        return self.root / ".locks" / f"{name}.{kind}"

    def _sha_file(self, name: str) -> Path:
        return self.root / ".sha256" / name

    def has(self, name: str, size: int, sha256: str) -> bool:
        """True when the complete file of this version is there (verified when it was
        installed). The size alone does not tell versions apart: a retrained
        model usually has its predecessor's size. A file without a record (a
        cache from before the records) is hashed once and adopted if it matches;
        one that cannot be read is a ``service`` error (the machine's disk, as
        in ``download``), the file left for the operator to look at."""
        try:
            if self.path(name).stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
        try:
            recorded = self._sha_file(name).read_text().strip()
        except FileNotFoundError:
            recorded = _UNVERIFIED
        if recorded != _UNVERIFIED:
            return recorded == sha256
        try:
            digest = hash_file(self.path(name), size)
        except OSError as exc:
            raise ConnectorError(f"model {name} cannot be verified in the model cache: "
                                 f"cannot read {exc.filename or self.path(name)}: "
                                 f"{exc.strerror or exc}", ErrorType.SERVICE,
                                 {"model": name, "reason": exc.strerror or str(exc)}
                                 ) from None
        if digest.hexdigest() != sha256:
            return False
        with _bookkeeping(name):
            self._record_sha(name, sha256)
        return True

    def _record_sha(self, name: str, sha256: str) -> None:
        record = self._sha_file(name)
        temporary = record.with_name(f".{name}.{os.getpid()}")
        try:
            temporary.write_text(sha256)
            os.replace(temporary, record)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise

    def models(self) -> list[str]:
        """Names of the complete model files, least recently used first. Only files the
        cache installed (or adopted) count: other files in its folder are the
        operator's, never evicted."""
        return [p.name for p in sorted(model_files(self.root), key=lambda p: p.stat().st_mtime)]

    def used_bytes(self) -> int:
        return sum(self.path(name).stat().st_size for name in self.models())

    def touch(self, name: str) -> None:
        """Mark a use (LRU order is by mtime)."""
        with _bookkeeping(name):
            os.utime(self.path(name))

    @contextmanager
    def use(self, name: str) -> Iterator[None]:
        """Hold the model in use: nobody evicts it meanwhile (shared, cross-process)."""
        with _bookkeeping(name):
            opened = self._open_lock(name, "use")
        with opened as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def download_lock(self, name: str, waiting: Callable[[], None] | None = None
                      ) -> Iterator[None]:
        """Be the one process downloading ``name``; ``waiting()`` runs while another is."""
        with _bookkeeping(name):
            opened = self._open_lock(name, "download")
        with opened as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if waiting is not None:
                        waiting()
                    time.sleep(WAIT_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _open_lock(self, name: str, kind: str) -> TextIO:
        """``name``'s ``kind`` lock file, opened (made when missing). Its OSError is
        classified by the caller, for the model being prepared: while ``a``
        makes room, a failure on ``b``'s lock is ``a``'s error, not ``b``'s."""
        return open(self._lock_file(name, kind), "a")  # closed by the caller's with

    def _downloading(self, name: str) -> bool:
        """Whether some live process holds ``name``'s download lock."""
        return self._held(name, "download")

    def _held(self, name: str, kind: str) -> bool:
        """Whether some live process holds ``name``'s ``kind`` lock (tried, not taken)."""
        with self._open_lock(name, kind) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def _reserved_bytes(self, but: str) -> int:
        """Bytes that other live downloads will take; stale reservations are dropped."""
        total = 0
        for entry in (self.root / ".reserved").iterdir():
            if entry.name == but:
                continue
            if not self._downloading(entry.name):
                entry.unlink(missing_ok=True)
                continue
            try:
                total += int(entry.read_text() or 0)
            except (OSError, ValueError):
                continue
        return total

    @contextmanager
    def reservation(self, name: str, size: int) -> Iterator[list[str]]:
        """Room for ``size`` more bytes, made by evicting idle models (LRU); yields the
        evicted names. Call with ``name``'s download lock held. ConnectorError
        (``service``, retryable) when models in use leave too little room."""
        if size > self.budget_bytes:
            raise ConnectorError(f"model {name} ({size} bytes) is larger than the model cache "
                                 f"budget ({self.budget_bytes} bytes)", ErrorType.MODEL)
        marker = self.root / ".reserved" / name
        with _bookkeeping(name), open(self.root / ".locks" / "cache", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                evicted = self._make_room(name, size)
                marker.write_text(str(size))
            except OSError:
                marker.unlink(missing_ok=True)
                raise
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        try:
            yield evicted
        finally:
            marker.unlink(missing_ok=True)

    def _make_room(self, name: str, size: int) -> list[str]:
        """Evict until both the budget and the disk have room for what ``name``'s
        download still writes (the budget may promise more than the disk has:
        its default is the pool's ``storage_gb``, else 100 GB). The victims are
        chosen first: when the idle ones cannot make the room, none is evicted."""
        parts = self._idle_parts(but=name)
        need = (self.used_bytes() + sum(_size(p) for p in parts) + self._reserved_bytes(name)
                + size - self.budget_bytes)
        disk_need = size - self._part_bytes(name) - shutil.disk_usage(self.root).free
        victims = [self.path(model) for model in self.models() if model != name] + parts
        chosen, budget_short, disk_short = [], need, disk_need
        evicted: list[str] = []
        for victim in sorted(victims, key=_mtime):
            if budget_short <= 0 and disk_short <= 0:
                break
            if victim in parts or not self._in_use(victim.name):
                chosen.append(victim)
                budget_short -= _size(victim)
                disk_short -= _size(victim)
        if budget_short <= 0 and disk_short <= 0:
            for victim in chosen:
                freed = self._evict_part(victim) if victim in parts else self._evict(victim.name)
                if freed:
                    evicted.append(victim.name)
                    need -= freed
                    disk_need -= freed
        if need > 0:
            raise ConnectorError(
                f"no room for model {name} ({size} bytes) in the model cache "
                f"({self.budget_bytes} bytes): the other models are in use", ErrorType.SERVICE)
        if disk_need > 0:
            raise ConnectorError(
                f"no room for model {name} ({size} bytes) on the model cache's disk "
                f"({self.root}): {disk_need} bytes short; its free space and the models "
                f"in use leave too little", ErrorType.SERVICE)
        return evicted

    def _in_use(self, name: str) -> bool:
        """Whether some process holds ``name`` in use (now)."""
        return self._held(name, "use")

    def _idle_parts(self, but: str) -> list[Path]:
        """Parts nobody is downloading (a failed, cancelled or killed download's) but
        ``but``'s: kept for a resume, they take disk like models and are evicted
        like them, by age."""
        found = []
        for part in (self.root / ".parts").iterdir():
            owner = part.name.rsplit(".", 2)[0]
            if _PART_RE.match(part.name) and owner != but and not self._downloading(owner):
                found.append(part)
        return found

    def _evict_part(self, part: Path) -> int:
        """Delete an idle part unless a download of it began meanwhile; the bytes freed."""
        with self._open_lock(part.name.rsplit(".", 2)[0], "download") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            try:
                size = _size(part)
                part.unlink(missing_ok=True)
                return size
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _part_bytes(self, name: str) -> int:
        """Bytes of ``name``'s downloads in progress (a resume writes only the rest)."""
        return sum(p.stat().st_size for p in (self.root / ".parts").iterdir()
                   if _PART_RE.match(p.name) and p.name.rsplit(".", 2)[0] == name)

    def evict(self, name: str) -> int:
        """Delete ``name`` if no process uses it; the bytes freed (0: in use or absent)."""
        with _bookkeeping(name):
            return self._evict(name)

    def _evict(self, name: str) -> int:
        """``evict``, its disk errors left to the caller (``_make_room`` names the model
        it makes room for)."""
        with self._open_lock(name, "use") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            try:
                path = self.path(name)
                size = path.stat().st_size if path.exists() else 0
                self._sha_file(name).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                return size
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record_failure(self, name: str, sha256: str, message: str) -> None:
        """Note that downloading this version of ``name`` failed for good (a ``model``
        error), so the processes waiting for that download do not repeat it. Best
        effort: on a disk that cannot take the note the download's own error is
        the job's, and a waiting process downloads once more."""
        note = self.root / ".failed" / name
        try:
            note.write_text(f"{sha256} {time.time()} {message}")
        except OSError:
            note.unlink(missing_ok=True)  # a note cut short would not parse anyway

    def failure(self, name: str, sha256: str, since: float) -> str | None:
        """The error of this version's download that failed for good after ``since``
        (epoch seconds), else None."""
        try:
            recorded, at, message = (self.root / ".failed" / name).read_text().split(" ", 2)
        except (FileNotFoundError, ValueError):
            return None
        return message if recorded == sha256 and float(at) >= since else None

    def install(self, name: str, sha256: str) -> Path:
        """Move a verified part into place, recording its version; other versions'
        parts go. (The record goes first: a crash in between leaves a file
        without one, hashed at its next use, never a file with a wrong one.) When
        the record cannot be written, the file goes too: unrecorded, it would be
        neither counted nor evicted."""
        path = self.path(name)
        with _bookkeeping(name, "the downloaded file is deleted"):
            try:
                self._sha_file(name).unlink(missing_ok=True)
                os.replace(self.part(name, sha256), path)
                self._record_sha(name, sha256)
            except OSError:
                self.part(name, sha256).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                raise
            (self.root / ".failed" / name).unlink(missing_ok=True)
            for stale in (self.root / ".parts").iterdir():
                if _PART_RE.match(stale.name) and stale.name.rsplit(".", 2)[0] == name:
                    stale.unlink(missing_ok=True)
        return path


def model_files(root: Path) -> list[Path]:
    """The cache's complete model files under ``root`` (those with a ``.sha256`` record)."""
    return [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
            and (root / ".sha256" / p.name).exists()]


def used_bytes(root: Path | str) -> int:
    """Bytes of the model files in the cache at ``root``, read without creating anything
    there (``emp machine`` reports it; the workers own the folder); 0 before it exists."""
    try:
        return sum(_size(path) for path in model_files(Path(root)))
    except FileNotFoundError:
        return 0


@contextmanager
def _bookkeeping(name: str, after: str = "") -> Iterator[None]:
    """The cache's own files for ``name`` change here: a disk error (full, read-only)
    becomes the ``service`` error a full disk gives on the model file."""
    try:
        yield
    except OSError as exc:
        raise _disk_error(f"model {name} cannot be kept in the model cache", exc, after,
                          {"model": name}) from None


@contextmanager
def _setting_up(root: Path) -> Iterator[None]:
    """The cache's folders are made (the first use in a process): a folder gone bad since
    the worker's start check (a volume unmounted, a full or read-only disk) is
    the same ``service`` error, so the job is retried, maybe on another machine."""
    try:
        yield
    except OSError as exc:
        raise _disk_error(f"the model cache {root} cannot be used", exc, "",
                          {"path": exc.filename or str(root)}) from None


def _disk_error(what: str, exc: OSError, after: str, details: dict[str, str]
                ) -> ConnectorError:
    where = f" {exc.filename}" if exc.filename else ""
    return ConnectorError(f"{what}: cannot write{where}: {exc.strerror or exc}"
                          + (f" ({after})" if after else ""), ErrorType.SERVICE,
                          {**details, "reason": exc.strerror or str(exc)})


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
