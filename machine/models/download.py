"""Stream one model file to a ``.part`` file, resuming after interruptions, then verify it.

An interrupted transfer (connection reset, response cut short) is resumed
with ``Range: bytes=<have>-``; a server that ignores the Range header (answers
200) restarts the file from byte 0. The SHA-256 is computed while the bytes
arrive (the part already on disk is hashed once when a run resumes it), and a
file that does not match is deleted: a ``model`` error, since downloading the
same URL again would give the same bytes. So is a URL that leads nowhere the
downloader can go (a redirect to ``file://`` or another scheme, a redirect
loop). 408 and 429 (a busy mirror) are waited out and resumed like a cut.
A download slower on the whole than EMP_MODEL_DOWNLOAD_MIN_RATE_KIB is given up.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from capability_router.catalog import redacted_url
from capability_router.whole_numbers import whole_number
from machine.connectors.base import ConnectorError, ErrorType
from machine.models import redirects
from machine.models.settings import positive

#: bytes_done, bytes_total, eta_seconds (None until a rate is known)
ProgressFn = Callable[[int, int, "float | None"], None]

#: Bytes per read from the response.
CHUNK_BYTES = 1 << 16
#: Tries in a row that bring no progress (under STALL_BYTES) before a download counts
#: as failed (network); ``EMP_MODEL_DOWNLOAD_TRIES``.
MAX_TRIES = positive("EMP_MODEL_DOWNLOAD_TRIES", 8, "a positive integer")
#: Seconds to wait for the server to send something.
TIMEOUT_SECONDS = 30.0
#: A transfer that gets fewer than STALL_BYTES in this many seconds is stalled: cut
#: and resumed like a dropped connection (a server trickling bytes just inside
#: the read timeout would otherwise hold the job forever);
#: ``EMP_MODEL_DOWNLOAD_STALL_SECONDS``.
STALL_SECONDS = positive("EMP_MODEL_DOWNLOAD_STALL_SECONDS", 60.0,
                         "a positive number of seconds")
STALL_BYTES = 1 << 16
#: Least average rate of a whole download, KiB/s: one must end within
#: DEADLINE_GRACE_SECONDS plus the bytes it still needs at this rate, else it fails
#: (``model``; a server sending just over STALL_BYTES a stall window would
#: otherwise hold the job for weeks); ``EMP_MODEL_DOWNLOAD_MIN_RATE_KIB``.
MIN_RATE_KIB = positive("EMP_MODEL_DOWNLOAD_MIN_RATE_KIB", 256.0,
                        "a positive number of KiB/s")
#: Seconds a download gets on top of its bytes at MIN_RATE_KIB (connecting, a slow
#: start, a few retries).
DEADLINE_GRACE_SECONDS = 60.0

#: Requests' errors for a URL that cannot be fetched at all: trying again gives the same.
_UNFOLLOWABLE = (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                 requests.exceptions.MissingSchema, requests.exceptions.TooManyRedirects)
#: A 206's Content-Range: ASCII digits, at most an exabyte's 19 (``\d`` takes '٣', and
#: int() refuses over 4,300 digits: a ValueError out of the download).
_CONTENT_RANGE = re.compile(r"^bytes ([0-9]{1,19})-[0-9]{1,19}/([0-9]{1,19})$")
#: "Come back later" statuses: not a wrong catalog entry.
_BUSY = (408, 429)
#: Longest Retry-After honoured, seconds.
MAX_RETRY_AFTER_SECONDS = 30.0
#: Wait before a retry: 0.1 s doubling per try in a row without progress, at most this.
BACKOFF_MAX_SECONDS = 2.0


class _Stalled(Exception):
    """Bytes arrive too slowly to ever finish: resumed like a dropped connection."""


_TRANSIENT = (_Stalled, requests.ConnectionError, requests.Timeout,
              requests.exceptions.ChunkedEncodingError, Urllib3Error, OSError)


def hash_file(path: Path, upto: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        left = upto
        while left > 0:
            block = source.read(min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest


def fetch(url: str, part: Path, size: int, sha256: str, progress: ProgressFn | None = None,
          tries: int = MAX_TRIES, session: redirects.Session | None = None) -> None:
    """Download ``url`` into ``part`` until it holds ``size`` bytes matching ``sha256``.

    :param part: the ``.part`` file; bytes already there are resumed from.
    :param size: expected length, bytes.
    :param progress: called after each chunk.
    Raises ConnectorError: ``model`` for a checksum or size mismatch (the
    announced one included: nothing is stored then), a 4xx
    other than 408/429 (the catalog entry is wrong; the part is deleted), a
    URL that leads to no http(s) file or a download slower on the whole than
    EMP_MODEL_DOWNLOAD_MIN_RATE_KIB (the part is kept), ``service`` when the part cannot be
    written (a full disk) or read back for its checksum (a failing disk; the
    part is deleted either way), ``network`` when the transfer
    kept failing (the part is kept for the next resume).
    """
    http = session or redirects.Session()
    real_url, url = url, redacted_url(url)  # url: for messages (no password, no query)
    started, fetched_now = time.monotonic(), 0
    left_at_start = size - (part.stat().st_size if part.exists() else 0)
    deadline = started + DEADLINE_GRACE_SECONDS + max(left_at_start, 0) / (MIN_RATE_KIB * 1024)
    digest, hashed = hashlib.sha256(), 0
    last_error = "no response"
    # Tries in a row without progress count: a link that drops now and then but takes
    # the file further each time is followed to the end. Progress is the part growing
    # past its furthest point by STALL_BYTES (a restart from byte 0 is none), and a
    # stall is never progress.
    failures, furthest, stalled = 0, -1, False
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            break
        if furthest >= 0:
            moved = have - furthest >= STALL_BYTES and not stalled
            failures = 0 if moved else failures + 1
            if failures >= tries:
                break
        if time.monotonic() >= deadline:
            raise _too_slow(url, have, size, started)
        furthest, stalled = max(furthest, have), False
        if hashed != have:
            digest, hashed = _hash_part(part, have, url), have
        # identity: the file's own bytes (a compressed body would fail its checksum)
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with redirects.get(http, real_url, headers, TIMEOUT_SECONDS, url) as reply:
                if reply.status_code == 416:  # nothing past what we have: start over
                    last_error = "HTTP 416"
                    part.unlink(missing_ok=True)
                    digest, hashed = hashlib.sha256(), 0
                    continue
                if reply.status_code in _BUSY:
                    raise _Busy(reply.headers.get("Retry-After"), reply.status_code)
                if 400 <= reply.status_code < 500:
                    part.unlink(missing_ok=True)
                    raise ConnectorError(f"model download {url} refused: HTTP "
                                         f"{reply.status_code}", ErrorType.MODEL)
                if reply.status_code >= 500:
                    raise requests.ConnectionError(f"HTTP {reply.status_code}")
                start = _range_start(reply, have) if reply.status_code == 206 else 0
                if start not in (0, have):  # a part from elsewhere: ask again from byte 0
                    last_error = f"206 from byte {start}, asked from {have}"
                    part.unlink(missing_ok=True)
                    digest, hashed = hashlib.sha256(), 0
                    continue
                if start == 0:  # Range ignored (200, or a 206 of the whole file): restart
                    have, digest, hashed = 0, hashlib.sha256(), 0
                announced = _announced_size(reply)
                if announced is not None and announced != size:
                    raise _mismatch(part, url, f"the server's file is {announced} bytes, "
                                               f"the catalog's {size}")
                mode = "ab" if have else "wb"
                window_at, window_bytes = time.monotonic(), 0
                with _open(part, mode, url) as sink:
                    # read1: what has arrived, so a cut-off response keeps every byte
                    # received (iter_content drops the chunk it was filling).
                    while block := reply.raw.read1(CHUNK_BYTES):
                        if hashed + len(block) > size:
                            raise _mismatch(part, url, f"more than the {size} bytes expected")
                        _write(sink, block, part, url)
                        window_bytes += len(block)
                        if time.monotonic() - window_at >= STALL_SECONDS:
                            if window_bytes < STALL_BYTES:
                                raise _Stalled(f"stalled: {window_bytes} bytes in the last "
                                               f"{STALL_SECONDS:g} s")
                            window_at, window_bytes = time.monotonic(), 0
                        digest.update(block)
                        hashed += len(block)
                        fetched_now += len(block)
                        if time.monotonic() >= deadline and hashed < size:
                            raise _too_slow(url, hashed, size, started)
                        if progress is not None:
                            progress(hashed, size, _eta(started, fetched_now, size - hashed))
        except redirects.Unfollowable as exc:
            raise ConnectorError(f"model download {exc}", ErrorType.MODEL,
                                 {"url": url}) from None
        except _UNFOLLOWABLE as exc:
            why = _scrub(f"{type(exc).__name__}: {exc}", real_url)
            raise ConnectorError(f"model download {url} leads where it cannot be fetched "
                                 f"(only http(s) URLs, at most 30 redirects): {why}",
                                 ErrorType.MODEL, {"url": url}) from None
        except _Busy as exc:
            last_error = f"HTTP {exc.status}"
            time.sleep(_until(deadline, max(_backoff(failures), exc.wait)))
            continue
        except _TRANSIENT as exc:
            last_error = _scrub(f"{type(exc).__name__}: {exc}", real_url)
            stalled = isinstance(exc, _Stalled)
            time.sleep(_until(deadline, _backoff(failures)))
            continue
    have = part.stat().st_size if part.exists() else 0
    if have != size:
        raise ConnectorError(f"model download {url} failed {tries} tries in a row at "
                             f"{have}/{size} bytes: {last_error}", ErrorType.NETWORK)
    if hashed != have:
        digest = _hash_part(part, have, url)
    if digest.hexdigest() != sha256:
        raise _mismatch(part, url, f"sha256 {digest.hexdigest()} is not the catalog's {sha256}")


def _too_slow(url: str, have: int, size: int, started: float) -> ConnectorError:
    """The download as a whole is slower than EMP_MODEL_DOWNLOAD_MIN_RATE_KIB: its part
    stays (a later job resumes it, or it is evicted like an idle one)."""
    return ConnectorError(
        f"model download {url} too slow: {have}/{size} bytes after "
        f"{time.monotonic() - started:.0f} s, under the {MIN_RATE_KIB:g} KiB/s average "
        f"EMP_MODEL_DOWNLOAD_MIN_RATE_KIB asks for (the partial file is kept)",
        ErrorType.MODEL, {"url": url})


def _until(deadline: float, wait: float) -> float:
    """``wait``, cut short at the download's deadline."""
    return max(0.0, min(wait, deadline - time.monotonic()))


def _scrub(text: str, url: str) -> str:
    """An exception's text without the URL's password and query (requests quotes them)."""
    parsed = urlparse(url)
    for secret in (parsed.password, parsed.query):
        if secret:
            text = text.replace(secret, "***")
    return text


def _range_start(reply: requests.Response, asked: int) -> int:
    """The first byte a 206 holds (its Content-Range), ``asked`` when it does not say."""
    match = _CONTENT_RANGE.match(reply.headers.get("Content-Range", ""))
    return int(match[1]) if match else asked


def _announced_size(reply: requests.Response) -> int | None:
    """The whole file's size a reply announces (a 206's Content-Range total, a 200's
    Content-Length), None when it announces none."""
    if reply.headers.get("Content-Encoding", "identity") != "identity":
        return None
    if reply.status_code == 206:
        match = _CONTENT_RANGE.match(reply.headers.get("Content-Range", ""))
        return int(match[2]) if match else None
    length = reply.headers.get("Content-Length", "")
    return whole_number(length, 19)  # at most an exabyte's 19 digits


def _open(part: Path, mode: str, url: str) -> BinaryIO:
    """The part, unbuffered: a write error (disk full) surfaces at its write."""
    try:
        return open(part, mode, buffering=0)  # closed by the caller's with
    except OSError as exc:
        raise _disk_error(part, url, exc) from None


def _write(sink: BinaryIO, block: bytes, part: Path, url: str) -> None:
    """All of ``block`` to the part. A write error is the machine's disk, not the
    network: retrying would fail the same way, and the part would keep the
    disk full for everything else on the machine, so it goes."""
    view = memoryview(block)
    try:
        while view:
            view = view[sink.write(view):]
    except OSError as exc:
        raise _disk_error(part, url, exc) from None


def _hash_part(part: Path, upto: int, url: str) -> hashlib._Hash:
    """The SHA-256 of the part's first ``upto`` bytes (a part found complete, or
    resumed). A read error (EIO from a failing disk, the file gone or
    unreadable) is the machine's disk, as a write error is: ``service``, so the
    job is retried, maybe elsewhere. Not ``model``: the bytes were never
    compared, nothing says the catalog entry is wrong (and a ``model`` error
    would fail the processes waiting for this download for good). The part
    goes when it can: bytes that cannot be read back cannot be resumed from."""
    try:
        return hash_file(part, upto)
    except OSError as exc:
        try:
            part.unlink(missing_ok=True)
            gone = " (the partial file is deleted)"
        except OSError:
            gone = ""
        raise ConnectorError(f"model download {url} cannot read back {exc.filename or part} "
                             f"for its checksum: {exc.strerror or exc}{gone}",
                             ErrorType.SERVICE, {"url": url}) from None


def _disk_error(part: Path, url: str, exc: OSError) -> ConnectorError:
    part.unlink(missing_ok=True)
    return ConnectorError(f"model download {url} cannot be written to {part.parent}: "
                          f"{exc.strerror or exc} (the partial file is deleted)",
                          ErrorType.SERVICE, {"url": url})


class _Busy(Exception):
    """The server asked to come back later (408, 429); ``wait``: its Retry-After, capped."""

    def __init__(self, retry_after: str | None, status: int) -> None:
        super().__init__(status)
        self.status = status
        try:
            self.wait = min(max(float(retry_after or 0), 0.0), MAX_RETRY_AFTER_SECONDS)
        except ValueError:  # an HTTP date: the usual backoff
            self.wait = 0.0


def _mismatch(part: Path, url: str, why: str) -> ConnectorError:
    part.unlink(missing_ok=True)
    return ConnectorError(f"model download {url} is corrupt ({why}); discarded",
                          ErrorType.MODEL, {"url": url})


def _eta(started: float, fetched: int, left: int) -> float | None:
    elapsed = time.monotonic() - started
    if fetched <= 0 or elapsed <= 0:
        return None
    return round(left / (fetched / elapsed), 1)


def _backoff(failures: int) -> float:
    return min(BACKOFF_MAX_SECONDS, 0.1 * 2 ** failures)
