"""Model downloads and the disk cache against a real local HTTP server."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_server import ModelServer

from capability_router.catalog import ModelEntry, parse_entry
from machine.connectors.base import ConnectorError, ErrorType
from machine.counters import ENV as COUNTERS_ENV
from machine.counters import read_counters
from machine.models import ModelCache, ModelManager, Preparing
from machine.models.cache import used_bytes

SIZE = 256 * 1024


@pytest.fixture
def server() -> Iterator[ModelServer]:
    served = ModelServer().start()
    yield served
    served.stop()


def _entry(server: ModelServer, name: str, size: int = SIZE) -> ModelEntry:
    return parse_entry(name, server.add(name, size))


def _manager(root: Path, budget: int = 10 * SIZE) -> ModelManager:
    return ModelManager(ModelCache(root, budget), client=None)


def _fetch(manager: ModelManager, *entries: ModelEntry) -> list[Preparing]:
    reports: list[Preparing] = []
    with manager.ready(list(entries), reports.append):
        pass
    return reports


def test_a_download_lands_verified_with_progress(server, tmp_path) -> None:
    entry = _entry(server, "sd15")
    reports = _fetch(_manager(tmp_path), entry)
    assert (tmp_path / "sd15").read_bytes() == server.files["sd15"]
    done = [r.bytes_done for r in reports if r.tier == "remote"]
    assert done == sorted(done) and done[-1] == SIZE and len(done) > 2
    assert reports[-1] == Preparing("sd15", "disk", SIZE, SIZE, 0.0)
    assert not list((tmp_path / ".parts").iterdir())
    # On disk already: no request, nothing reported.
    assert _fetch(_manager(tmp_path), entry) == []
    assert len(server.requests_for("sd15")) == 1


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path) -> None:
    entry = _entry(server, "flux")
    server.cut_next, server.cut_at = 2, 50_000
    _fetch(_manager(tmp_path), entry)
    assert (tmp_path / "flux").read_bytes() == server.files["flux"]
    asked = [(s.range, s.status) for s in server.requests_for("flux")]
    assert asked == [(None, 200), ("bytes=50000-", 206), ("bytes=100000-", 206)]


def test_a_server_that_ignores_range_makes_it_restart(server, tmp_path) -> None:
    entry = _entry(server, "flux")
    server.cut_next, server.cut_at, server.ignore_range = 1, 50_000, True
    _fetch(_manager(tmp_path), entry)
    assert (tmp_path / "flux").read_bytes() == server.files["flux"]
    assert [s.status for s in server.requests_for("flux")] == [200, 200]


def test_a_bad_checksum_is_a_model_error_and_leaves_no_file(server, tmp_path) -> None:
    entry = _entry(server, "bad")
    server.corrupt.add("bad")
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path), entry)
    assert caught.value.error_type == ErrorType.MODEL and "sha256" in caught.value.message
    assert not (tmp_path / "bad").exists() and not list((tmp_path / ".parts").iterdir())


def test_a_missing_url_is_a_model_error(server, tmp_path) -> None:
    entry = ModelEntry("gone", server.url + "/gone", 10, "0" * 64)
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path), entry)
    assert caught.value.error_type == ErrorType.MODEL and "404" in caught.value.message


def _ready_in_child(root: str, entry: ModelEntry, out: str) -> None:
    reports: list[Preparing] = []
    with _manager(Path(root)).ready([entry], reports.append) as paths:
        Path(out).write_text(f"{paths[entry.name].stat().st_size} {len(reports)}")


def _run_in_three_children(target, tmp_path: Path, entry: ModelEntry, timeout: float) -> None:
    """Three forked worker processes run ``target`` on one cache at once (out0..out2)."""
    fork = multiprocessing.get_context("fork")
    children = [fork.Process(target=target,
                             args=(str(tmp_path / "cache"), entry, str(tmp_path / f"out{i}")))
                for i in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=timeout)
        assert child.exitcode == 0


def test_processes_wanting_the_same_model_share_one_download(server, tmp_path) -> None:
    entry = _entry(server, "shared")
    server.chunk, server.chunk_delay = 16 * 1024, 0.05  # ~0.8 s: the others wait for it
    _run_in_three_children(_ready_in_child, tmp_path, entry, timeout=60)
    assert len(server.requests_for("shared")) == 1
    for i in range(3):
        size, reports = (tmp_path / f"out{i}").read_text().split()
        assert int(size) == SIZE and int(reports) >= 1  # each one reported its wait


def test_the_budget_evicts_the_least_recently_used_idle_model(server, tmp_path) -> None:
    a, b, c, d = (_entry(server, name) for name in "abcd")
    manager = _manager(tmp_path, budget=2 * SIZE + 1000)
    _fetch(manager, a)
    _fetch(manager, b)
    os.utime(tmp_path / "a", (1, 1))  # a: long unused
    os.utime(tmp_path / "b", (2, 2))
    _fetch(manager, a)  # a used again: b is now the least recently used
    _fetch(manager, c)
    assert manager.cache.models() == ["a", "c"]
    with manager.ready([a]):  # a in use: d may evict only c, though c is newer
        _fetch(manager, d)
        assert sorted(manager.cache.models()) == ["a", "d"]
        with manager.ready([d]), pytest.raises(ConnectorError) as caught:
            _fetch(manager, b)  # both held: no room
    assert caught.value.error_type == ErrorType.SERVICE
    assert sorted(manager.cache.models()) == ["a", "d"]
    assert manager.cache.used_bytes() <= manager.cache.budget_bytes


def test_a_model_larger_than_the_budget_is_refused(server, tmp_path) -> None:
    entry = _entry(server, "huge")
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path, budget=SIZE - 1), entry)
    assert caught.value.error_type == ErrorType.MODEL and not server.requests_for("huge")


def test_a_changed_catalog_entry_never_resumes_from_the_old_file(server, tmp_path) -> None:
    old = _entry(server, "sd15")
    manager = _manager(tmp_path)
    # An interrupted download of the old file, left for a resume.
    manager.cache.part("sd15", old.sha256).write_bytes(server.files["sd15"][:50_000])
    new = _entry(server, "sd15")  # the catalog now names a new file under the same name
    _fetch(manager, new)
    assert (tmp_path / "sd15").read_bytes() == server.files["sd15"]
    assert [s.range for s in server.requests_for("sd15")] == [None]  # from byte 0
    assert not list((tmp_path / ".parts").iterdir())  # the old part is gone too


@pytest.mark.timeout(60)
@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "/loop",
                                      "http://[::1/x"])
def test_a_redirect_the_downloader_cannot_follow_is_a_model_error_at_once(
        server, tmp_path, location) -> None:
    """The catalog URL answers 302 to ``file:///etc/passwd``, to ``ftp://`` or to
    itself (a loop). Before: requests' InvalidSchema / TooManyRedirects counted as
    a network hiccup, so the download was tried 8 times (about 9 s of backoff)
    and failed as a retryable ``network`` error; the job was then retried in
    vain. A malformed Location (``http://[::1/x``) raised a bare ValueError out
    of requests. Now: one try, a ``model`` error naming the redirect, no file
    left."""
    entry = _entry(server, "moved")
    server.redirects["moved"] = location if location != "/loop" else server.url + "/moved"
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path), entry)
    assert caught.value.error_type == ErrorType.MODEL, caught.value.message
    assert "redirect" in caught.value.message.lower() or "scheme" in caught.value.message
    assert len(server.requests_for("moved")) <= 31  # one try (requests follows 30)
    assert not (tmp_path / "moved").exists() and not list((tmp_path / ".parts").iterdir())


def test_a_rate_limited_download_keeps_its_bytes_and_resumes(server, tmp_path) -> None:
    """An interrupted download (50 000 bytes in its part file) resumes and the model
    server answers 429 Too Many Requests (Retry-After: 0), as a busy mirror does.
    Before: any 4xx counted as a wrong catalog entry: the 50 000 bytes were
    deleted and the job failed with a ``model`` error (no retry). Now 408/429
    are transient: the download waits and resumes from byte 50 000."""
    entry = _entry(server, "busy")
    manager = _manager(tmp_path)
    manager.cache.part("busy", entry.sha256).write_bytes(server.files["busy"][:50_000])
    server.statuses = [429]
    _fetch(manager, entry)
    assert (tmp_path / "busy").read_bytes() == server.files["busy"]
    asked = [(s.range, s.status) for s in server.requests_for("busy")]
    assert asked == [("bytes=50000-", 429), ("bytes=50000-", 206)]


def test_a_new_file_of_the_same_size_replaces_the_cached_one(server, tmp_path) -> None:
    """The catalog entry of ``lora`` is updated to a retrained file: same size,
    new sha256 (the usual case for a fine-tune of the same architecture).
    Before: the cache judged "on disk" by size alone and kept serving the old
    file forever. Now the installed file's checksum is recorded and compared."""
    old = _entry(server, "lora")
    manager = _manager(tmp_path)
    _fetch(manager, old)
    new = _entry(server, "lora")
    assert new.size == old.size and new.sha256 != old.sha256
    _fetch(manager, new)
    assert (tmp_path / "lora").read_bytes() == server.files["lora"]
    assert len(server.requests_for("lora")) == 2
    assert _fetch(manager, new) == [] and len(server.requests_for("lora")) == 2
    # A cache filled before the records: the file is hashed once and adopted.
    (tmp_path / ".sha256" / "lora").unlink()
    assert _fetch(manager, new) == [] and len(server.requests_for("lora")) == 2
    assert (tmp_path / ".sha256" / "lora").read_text() == new.sha256


def _ready_with_file_limit(root: str, entry: ModelEntry, limit: int, out: str) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        with _manager(Path(root)).ready([entry]):
            pass
        Path(out).write_text("ok")
    except ConnectorError as exc:
        Path(out).write_text(f"{exc.error_type.value} {exc.message}")


@pytest.mark.timeout(60)
def test_a_disk_write_error_stops_the_download_and_frees_the_disk(server, tmp_path) -> None:
    """A worker process whose disk takes no more bytes after 100 000 (a file size
    limit: EFBIG, as ENOSPC on a full disk) downloads a model. Before: the
    write error counted as a network hiccup: 8 tries (about 9 s), a ``network``
    error, and the 100 000-byte part was kept on the full disk. Now: the first
    write error stops it, the part is deleted and the job gets a ``service``
    error (another machine may have room) naming the disk error."""
    entry = _entry(server, "big")
    fork = multiprocessing.get_context("fork")
    out = tmp_path / "out"
    child = fork.Process(target=_ready_with_file_limit,
                         args=(str(tmp_path / "cache"), entry, 100_000, str(out)))
    child.start()
    child.join(timeout=50)
    assert child.exitcode == 0
    kind, message = out.read_text().split(" ", 1)
    assert kind == "service" and "File too large" in message, message
    assert len(server.requests_for("big")) == 1
    assert not list((tmp_path / "cache" / ".parts").iterdir())
    assert not (tmp_path / "cache" / "big").exists()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root; skipped otherwise)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.timeout(60)
def test_a_budget_larger_than_the_disk_evicts_for_the_disk_too(server, small_disk) -> None:
    """The budget (default: the pool's storage_gb, else 100 GB) is more than the
    disk has: a 1 MiB disk, a 10-model budget, four 300 000-byte models.
    Before: the fourth download hit ENOSPC, was retried 8 times as a network
    error and failed, the disk left full of its part. Now the free space counts
    like the budget: the least recently used idle model is evicted first."""
    entries = [_entry(server, name, 300_000) for name in ("a", "b", "c", "d")]
    manager = _manager(small_disk, budget=10 * 300_000)
    for entry in entries:
        _fetch(manager, entry)
        os.utime(small_disk / entry.name, (entries.index(entry) + 1,) * 2)
    assert manager.cache.models() == ["b", "c", "d"]
    assert (small_disk / "d").read_bytes() == server.files["d"]


@pytest.mark.timeout(30)
def test_a_trickling_server_is_cut_off_as_stalled(server, tmp_path, monkeypatch) -> None:
    """The model server sends 100 bytes every 0.2 s (500 B/s: a 256 KiB model in
    9 minutes, a 4 GB one in three months), each piece well inside the 30 s
    read timeout. Before: nothing bounded it; the job (and every worker waiting
    for the same model) sat in ``assigned`` for as long as the server liked.
    Now a download getting less than 64 KiB in ``EMP_MODEL_DOWNLOAD_STALL_SECONDS``
    is stalled: cut and resumed, then a ``network`` error, the part kept."""
    from machine.models import download

    monkeypatch.setattr(download, "STALL_SECONDS", 0.5)
    monkeypatch.setattr(download, "BACKOFF_MAX_SECONDS", 0.05)  # 8 tries, not 9 s of waits
    entry = _entry(server, "slow")
    server.chunk, server.chunk_delay = 100, 0.2
    manager = _manager(tmp_path)
    with pytest.raises(ConnectorError) as caught:
        with manager.ready([entry]):
            pass
    assert caught.value.error_type == ErrorType.NETWORK and "stalled" in caught.value.message
    assert len(server.requests_for("slow")) == download.MAX_TRIES
    part = manager.cache.part("slow", entry.sha256)
    assert 0 < part.stat().st_size < entry.size  # kept for a resume


@pytest.mark.timeout(60)
def test_a_killed_download_s_part_counts_in_the_budget_and_is_evicted(server, tmp_path) -> None:
    """A worker is killed (SIGKILL) while it downloads ``x``; ``x`` is never asked for
    again (its catalog entry went). Before: its ``.part`` stayed forever outside
    the budget: two more models filled the budget and the disk held 1.5 models
    more than it allows. Now an idle part (nobody downloading it) counts like a
    model and is evicted least recently used first."""
    import signal
    import time

    x = _entry(server, "x")
    server.chunk, server.chunk_delay = 16 * 1024, 0.05
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=_ready_in_child,
                         args=(str(tmp_path), x, str(tmp_path / "never")))
    child.start()
    part = _manager(tmp_path).cache.part("x", x.sha256)
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < SIZE // 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    assert SIZE // 2 <= part.stat().st_size < SIZE
    os.utime(part, (1, 1))  # long ago
    server.chunk_delay = 0.0

    manager = _manager(tmp_path, budget=2 * SIZE + 1000)
    a, b = _entry(server, "a"), _entry(server, "b")
    _fetch(manager, a)
    _fetch(manager, b)
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk <= manager.cache.budget_bytes, on_disk
    assert not part.exists() and manager.cache.models() == ["a", "b"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("claimed", [None, 10 ** 12])
def test_a_server_file_of_another_size_is_a_model_error_at_once(server, tmp_path,
                                                                claimed) -> None:
    """The catalog says 1000 bytes more than the server's file has (a wrong entry),
    or the server announces a 1 TB Content-Length. Before: the short file was
    fetched, its resume answered 416, so it was fetched again from byte 0: 8
    requests (about 9 s), then a retryable ``network`` error, the job retried to
    do it all again; the 1 TB claim was read up to the catalog's size first.
    Now the announced length is checked against the catalog's size before any
    byte is stored: one request, a ``model`` error naming both sizes."""
    body = server.add("short", SIZE)
    entry = parse_entry("short", {**body, "size": SIZE + 1000})
    if claimed:
        entry = parse_entry("short", body)
        server.claimed_length["short"] = claimed
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path), entry)
    assert caught.value.error_type == ErrorType.MODEL, caught.value.message
    assert str(claimed or SIZE) in caught.value.message
    assert len(server.requests_for("short")) == 1
    assert not list((tmp_path / ".parts").iterdir()) and not (tmp_path / "short").exists()


@pytest.mark.parametrize("claimed", ["\u00b2", "9" * 5000])
def test_a_content_length_of_no_ascii_digits_is_no_announced_size(server, tmp_path,
                                                                  claimed: str) -> None:
    """Tried: a server whose Content-Length is the byte 0xB2, which HTTP reads as Latin-1
    '²', or 5,000 digits. Python's str.isdigit() takes both and int() refuses both (over
    4,300 digits): before, the download raised a bare ValueError out of the worker's
    preparation. Now each counts as no announced size, as a missing header does: the
    file is read to its end and checked by its checksum."""
    entry = _entry(server, "odd")
    server.claimed_length["odd"] = claimed
    _fetch(_manager(tmp_path), entry)
    assert (tmp_path / "odd").read_bytes() == server.files["odd"]


def test_a_content_range_of_5000_digits_is_no_announced_size() -> None:
    """Tried: a 206 whose Content-Range is ``bytes 0-9/`` and 5,000 digits, or starts at
    5,000 digits. Before, int() raised ValueError out of the download (over 4,300
    digits); now it is a Content-Range that says nothing: no announced size, and the
    start asked for."""
    import requests

    from machine.models.download import _announced_size, _range_start

    for header in ("bytes 0-9/" + "9" * 5000, "bytes " + "9" * 5000 + "-9/10"):
        reply = requests.Response()
        reply.status_code = 206
        reply.headers["Content-Range"] = header
        assert _announced_size(reply) is None
        assert _range_start(reply, 7) == 7
    reply.headers["Content-Range"] = "bytes 5-9/10"
    assert (_announced_size(reply), _range_start(reply, 0)) == (10, 5)


def test_a_server_that_would_gzip_sends_the_file_as_is(server, tmp_path) -> None:
    """A server (or CDN) that compresses for clients accepting gzip. Before: the
    download asked with requests' default ``Accept-Encoding: gzip, deflate``
    and stored the compressed bytes: a checksum mismatch, the job failed with
    a ``model`` error. Now it asks for the file as is (``identity``)."""
    entry = _entry(server, "zipped")
    server.gzipped.add("zipped")
    _fetch(_manager(tmp_path), entry)
    assert (tmp_path / "zipped").read_bytes() == server.files["zipped"]


def test_a_download_error_does_not_show_the_url_s_secrets(server, tmp_path) -> None:
    """A private mirror's catalog URL carries credentials (``user:s3cret@``) or a
    signed query (``?token=...``); the file is gone (404). Before: the error
    (the job's ``last_error``, its events and webhooks, all visible to the
    customer) quoted the URL whole. Now the password and query are masked."""
    host = server.url.split("//", 1)[1]
    entry = ModelEntry("gone", f"http://user:s3cret@{host}/gone?token=t0ken", 10, "0" * 64)
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path), entry)
    shown = f"{caught.value.message} {caught.value.details}"
    assert "404" in shown and "/gone" in shown
    assert "s3cret" not in shown and "t0ken" not in shown, shown


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, value, message", [
    ("EMP_MODEL_CACHE_GB", "0", "must be a positive number of GB, got '0'"),
    ("EMP_MODEL_CACHE_GB", "lots", "must be a number, got 'lots'"),
    ("EMP_MODEL_DOWNLOAD_TRIES", "0", "must be a positive integer, got '0'"),
    ("EMP_MODEL_DOWNLOAD_STALL_SECONDS", "soon", "must be a number, got 'soon'"),
    ("EMP_MODEL_DOWNLOAD_MIN_RATE_KIB", "0", "must be a positive number of KiB/s, got '0'"),
])
def test_a_worker_with_a_bad_model_setting_stops_at_start(tmp_path, name, value,
                                                          message) -> None:
    """Tried: ``emp worker`` on a machine with a model cache and one bad model setting.
    Before: the worker started and offered the catalog's models; then every job
    needing one failed, ``EMP_MODEL_CACHE_GB=0`` with a permanent ``model`` error
    ("larger than the model cache budget (0 bytes)"), a malformed number with a
    traceback naming no variable. Now the start stops with one line naming it."""
    from tests.emp_tasks.test_cli import run

    done = run("worker", env={name: value, "EMP_MODEL_CACHE_DIR": str(tmp_path / "cache"),
                              "EMP_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"Error: {name} {message}", done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_model_that_cannot_fit_evicts_nothing(server, tmp_path) -> None:
    """The budget holds three models; a, b and c are cached, a is in use, and a job
    wants a model of 2.5 models' size: room only if a went too. Before: b and c
    were evicted, then the download was refused anyway, so their next jobs
    downloaded them again. Now the room is planned first: refused, nothing
    evicted."""
    manager = _manager(tmp_path, budget=3 * SIZE + 1000)
    a, b, c = (_entry(server, name) for name in "abc")
    for entry in (a, b, c):
        _fetch(manager, entry)
    big = _entry(server, "big", SIZE * 5 // 2)
    with manager.ready([a]), pytest.raises(ConnectorError) as caught:
        _fetch(manager, big)
    assert caught.value.error_type == ErrorType.SERVICE
    assert sorted(manager.cache.models()) == ["a", "b", "c"]
    assert not server.requests_for("big")


@pytest.mark.timeout(60)
def test_a_model_larger_than_the_disk_evicts_nothing(server, small_disk) -> None:
    """A 1 MiB disk holding two models, a budget of ten, and a model of 1.2 MB.
    Before: both cached models were evicted to make room, then the disk still
    had too little. Now it is refused (``service``: a machine with a bigger
    disk may take it) and both stay."""
    manager = _manager(small_disk, budget=10 * 300_000)
    for name in ("a", "b"):
        _fetch(manager, _entry(server, name, 300_000))
    with pytest.raises(ConnectorError) as caught:
        _fetch(manager, _entry(server, "huge", 1_200_000))
    assert caught.value.error_type == ErrorType.SERVICE and "disk" in caught.value.message
    assert manager.cache.models() == ["a", "b"] and not server.requests_for("huge")


def test_a_206_from_another_byte_than_asked_restarts_the_file(server, tmp_path) -> None:
    """A server (or proxy) answers the resume ``Range: bytes=50000-`` with 206 but the
    whole file (``Content-Range: bytes 0-...``). Before: the bytes were appended
    after the 50 000 already there, the checksum failed, the part was deleted
    and the job failed for good with a ``model`` error. Now the Content-Range
    start is checked: from byte 0, the file is written from byte 0."""
    entry = _entry(server, "proxy")
    manager = _manager(tmp_path)
    manager.cache.part("proxy", entry.sha256).write_bytes(server.files["proxy"][:50_000])
    server.range_from_zero = True
    _fetch(manager, entry)
    assert (tmp_path / "proxy").read_bytes() == server.files["proxy"]
    assert [(s.range, s.status) for s in server.requests_for("proxy")] == [
        ("bytes=50000-", 206)]


def _own_address() -> str | None:
    """This machine's first non-loopback IPv4 address (None without one)."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks the route
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["loopback", "metadata"])
def test_a_redirect_to_a_less_public_address_is_refused(tmp_path, target) -> None:
    """The catalog URL names a host by its network address; it redirects to
    ``127.0.0.1`` (the machine's own services) or to ``169.254.169.254`` (the
    cloud's metadata service). Before: requests followed either (the loopback
    file was even downloaded and installed). Now a redirect may not lead to a
    less public address than the catalog URL's: a ``model`` error, nothing
    requested from the target, no file."""
    address = _own_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address")
    server = ModelServer(bind="0.0.0.0").start()
    try:
        body = server.add("inside", SIZE)
        port = server.server.server_address[1]
        server.files["moved"] = server.files["inside"]
        server.redirects["moved"] = (f"http://127.0.0.1:{port}/inside" if target == "loopback"
                                     else "http://169.254.169.254/latest/meta-data/")
        entry = parse_entry("moved", {**body, "url": f"http://{address}:{port}/moved"})
        with pytest.raises(ConnectorError) as caught:
            _fetch(_manager(tmp_path), entry)
        assert caught.value.error_type == ErrorType.MODEL, caught.value.message
        assert "refused" in caught.value.message and "loopback or link-local" in (
            caught.value.message)
        assert not server.requests_for("inside") and not (tmp_path / "moved").exists()
    finally:
        server.stop()


def test_a_redirect_between_equally_public_addresses_is_followed(server, tmp_path) -> None:
    """A loopback catalog URL redirecting to another loopback path: followed."""
    body = server.add("real", SIZE)
    server.redirects["alias"] = server.url + "/real"
    _fetch(_manager(tmp_path), parse_entry("alias", {**body, "url": server.url + "/alias"}))
    assert (tmp_path / "alias").read_bytes() == server.files["real"]


def test_a_download_cut_often_but_progressing_is_not_given_up(server, tmp_path) -> None:
    """A 1 MiB model over a link that drops every 80 000 bytes (as long transfers
    from a CDN do): 14 requests, each resuming where the last stopped. Before:
    ``EMP_MODEL_DOWNLOAD_TRIES`` (8) counted every request, so the download
    failed with a ``network`` error at 640 000 bytes though each try moved it
    on; a 10 GB model dropping every 100 MB could never arrive. Now only tries
    in a row that bring no progress (under 64 KiB) count."""
    entry = _entry(server, "long", 1 << 20)
    server.cut_next, server.cut_at = 13, 80_000
    _fetch(_manager(tmp_path), entry)
    assert (tmp_path / "long").read_bytes() == server.files["long"]
    assert len(server.requests_for("long")) == 14


@pytest.mark.timeout(60)
def test_a_server_that_restarts_and_cuts_every_time_is_given_up(server, tmp_path,
                                                                 monkeypatch) -> None:
    """The same link, but the server ignores Range: every try starts at byte 0 and
    is cut at 100 000. Starting over is no progress: after the first try,
    ``EMP_MODEL_DOWNLOAD_TRIES`` (8) more end in a ``network`` error."""
    from machine.models import download

    monkeypatch.setattr(download, "BACKOFF_MAX_SECONDS", 0.05)
    entry = _entry(server, "loop")
    server.ignore_range, server.cut_next, server.cut_at = True, 100, 100_000
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path), entry)
    assert caught.value.error_type == ErrorType.NETWORK
    assert len(server.requests_for("loop")) == 1 + download.MAX_TRIES


def _ready_error_in_child(root: str, entry: ModelEntry, out: str) -> None:
    try:
        with _manager(Path(root)).ready([entry]):
            Path(out).write_text("ok")
    except ConnectorError as exc:
        Path(out).write_text(f"{exc.error_type.value} {exc.message}")


@pytest.mark.timeout(60)
def test_processes_waiting_for_a_bad_download_do_not_repeat_it(server, tmp_path) -> None:
    """Three worker processes want the same model at once and its file fails the
    checksum. Before: the one downloading failed, then each waiting process
    took its turn downloading the same bad file again (3 downloads; 8 workers
    and a 20 GB model: 160 GB for nothing). Now the processes that waited get
    the failure of the download they waited for: one download, three ``model``
    errors. A later job (which did not wait) tries again."""
    entry = _entry(server, "bad3")
    server.corrupt.add("bad3")
    server.chunk, server.chunk_delay = 16 * 1024, 0.05  # ~0.8 s: the others wait for it
    _run_in_three_children(_ready_error_in_child, tmp_path, entry, timeout=50)
    outcomes = [(tmp_path / f"out{i}").read_text() for i in range(3)]
    assert all(o.startswith("model ") and "sha256" in o for o in outcomes), outcomes
    assert len(server.requests_for("bad3")) == 1
    server.corrupt.clear()
    server.chunk_delay = 0.0
    _fetch(_manager(tmp_path / "cache"), entry)  # fixed upstream: a new job gets it
    assert len(server.requests_for("bad3")) == 2


def test_files_the_cache_did_not_download_are_never_evicted(server, tmp_path) -> None:
    """An operator points ``EMP_MODEL_CACHE_DIR`` at a folder that already holds
    files of theirs (a hand-installed checkpoint, notes), e.g. the service's
    own model folder. Before: every file in it counted as a cached model and
    the oldest were deleted to make room for downloads. Now only files the
    cache downloaded (and verified) are counted and evicted."""
    (tmp_path / "handmade.safetensors").write_bytes(os.urandom(SIZE))
    (tmp_path / "notes.txt").write_text("do not delete")
    os.utime(tmp_path / "handmade.safetensors", (1, 1))
    os.utime(tmp_path / "notes.txt", (1, 1))
    manager = _manager(tmp_path, budget=2 * SIZE + 1000)
    for name in ("a", "b", "c"):
        _fetch(manager, _entry(server, name))
    assert (tmp_path / "handmade.safetensors").stat().st_size == SIZE
    assert (tmp_path / "notes.txt").read_text() == "do not delete"
    assert manager.cache.models() == ["b", "c"]


@pytest.mark.timeout(60)
def test_a_worker_whose_model_cache_folder_cannot_be_made_stops_at_start(tmp_path) -> None:
    """Tried: ``emp worker`` with ``EMP_MODEL_CACHE_DIR`` under a regular file (a typo,
    a volume not mounted). Before: the worker started and offered the catalog's
    models; every job needing one then failed with a NotADirectoryError
    traceback. Now the start stops with one line naming the variable."""
    from tests.emp_tasks.test_cli import run

    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" / "cache"
    done = run("worker", env={"EMP_MODEL_CACHE_DIR": str(folder),
                              "EMP_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: EMP_MODEL_CACHE_DIR {folder} cannot be used:"), last
    assert "Not a directory" in last and "Traceback" not in done.stdout + done.stderr


def test_a_cache_from_before_the_checksum_records_keeps_its_files_its_own(server,
                                                                       tmp_path) -> None:
    """A machine's cache folder filled by the version without ``.sha256`` records
    (it has ``.parts``, ``.locks``, ``.reserved``), upgraded. Its files are
    still the cache's: counted and evicted like models (else a full old cache
    could never make room), and one a job needs is adopted by its checksum
    without a download."""
    a, b = _entry(server, "a"), _entry(server, "b")
    for sub in (".parts", ".locks", ".reserved"):
        (tmp_path / sub).mkdir()
    for entry, when in ((a, 1), (b, 2)):
        (tmp_path / entry.name).write_bytes(server.files[entry.name])
        os.utime(tmp_path / entry.name, (when, when))
    manager = _manager(tmp_path, budget=2 * SIZE + 1000)
    assert manager.cache.models() == ["a", "b"]
    _fetch(manager, _entry(server, "c"))  # evicts a, the least recently used
    assert manager.cache.models() == ["b", "c"]
    assert _fetch(manager, b) == [] and not server.requests_for("b")  # adopted


def test_credentials_follow_a_redirect_on_the_same_host(server, tmp_path) -> None:
    """A private mirror with basic auth (``http://user:pw@host/alias``) redirects to
    another URL of the same host (an absolute Location, no credentials in it).
    requests' own redirect handling sent the credentials along (same host
    only); following by hand (c428ee6) dropped them: a 401, a ``model`` error.
    Now they go along again, to the same host only."""
    import base64

    body = server.add("real", SIZE)
    server.redirects["alias"] = server.url + "/real"
    server.authorization = "Basic " + base64.b64encode(b"user:pw").decode()
    host = server.url.split("//", 1)[1]
    _fetch(_manager(tmp_path), parse_entry("alias", {**body,
                                                     "url": f"http://user:pw@{host}/alias"}))
    assert (tmp_path / "alias").read_bytes() == server.files["real"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cut", [False, True])
def test_a_name_that_rebinds_after_its_check_is_never_connected_to(tmp_path, monkeypatch,
                                                                   cut) -> None:
    """DNS rebinding: the catalog URL's name answers the machine's network address
    (private) when it is first looked up, then ``127.0.0.1`` on every later
    look-up; a service of the machine's own listens on 127.0.0.1 at the same
    port. Before: the address class was checked on the first answer, then
    requests looked the name up again and connected to 127.0.0.1 (the loopback
    service got the request). Now the connection goes to exactly the addresses
    that were checked; a resume (``cut``: the first response is cut short)
    looks the name up again, and its loopback answer is refused against the
    download's first (private) one: a ``model`` error. Loopback never sees a
    request."""
    import socket

    from machine.models import download

    address = _own_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address")
    monkeypatch.setattr(download, "BACKOFF_MAX_SECONDS", 0.05)
    server = ModelServer(bind=address).start()
    inside = ModelServer(port=server.server.server_address[1]).start()
    try:
        body = server.add("rebound", SIZE)
        inside.files["rebound"] = server.files["rebound"]
        if cut:
            server.cut_next, server.cut_at = 1, 50_000
        real, looked_up = socket.getaddrinfo, []

        def resolve(host, port, *args, **kwargs):  # noqa: ANN001, ANN202 - getaddrinfo's
            if host != "mirror.rebind.test":
                return real(host, port, *args, **kwargs)
            looked_up.append(host)
            return real(address if len(looked_up) == 1 else "127.0.0.1", port, *args,
                        **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        port = server.server.server_address[1]
        entry = parse_entry("rebound", {**body,
                                        "url": f"http://mirror.rebind.test:{port}/rebound"})
        if cut:
            with pytest.raises(ConnectorError) as caught:
                _fetch(_manager(tmp_path), entry)
            assert caught.value.error_type == ErrorType.MODEL, caught.value.message
            assert "refused" in caught.value.message and "loopback" in caught.value.message
            assert [s.status for s in server.requests_for("rebound")] == [200]
        else:
            _fetch(_manager(tmp_path), entry)
            assert (tmp_path / "rebound").read_bytes() == server.files["rebound"]
        assert not inside.served
    finally:
        server.stop()
        inside.stop()


@pytest.mark.timeout(30)
def test_a_download_slower_than_the_minimum_average_rate_is_given_up(server, tmp_path,
                                                                     monkeypatch) -> None:
    """The model server sends 16 KiB every 0.05 s (about 320 KiB/s: progress, far
    above the stall threshold of 64 KiB a minute) and the operator asks for at
    least 1024 KiB/s on average (``EMP_MODEL_DOWNLOAD_MIN_RATE_KIB``). Before:
    nothing bounded a download as a whole; a server sending just over 64 KiB a
    minute (a 4 GB model in 44 days) held the job in ``assigned`` all along.
    Now a download must end within a grace (60 s; 0.2 s here) plus its bytes
    at the minimum rate (0.25 s for 256 KiB): a ``model`` error naming the
    setting, waiting processes fail with it, the part is kept for a resume."""
    from machine.models import download

    monkeypatch.setattr(download, "MIN_RATE_KIB", 1024.0)
    monkeypatch.setattr(download, "DEADLINE_GRACE_SECONDS", 0.2)
    entry = _entry(server, "trickle")
    server.chunk, server.chunk_delay = 16 * 1024, 0.05  # 256 KiB in about 0.8 s
    manager = _manager(tmp_path)
    with pytest.raises(ConnectorError) as caught:
        _fetch(manager, entry)
    assert caught.value.error_type == ErrorType.MODEL, caught.value.message
    assert "EMP_MODEL_DOWNLOAD_MIN_RATE_KIB" in caught.value.message
    assert len(server.requests_for("trickle")) == 1 and not (tmp_path / "trickle").exists()
    assert 0 < manager.cache.part("trickle", entry.sha256).stat().st_size < entry.size
    assert manager.cache.failure("trickle", entry.sha256, 0) == caught.value.message


@pytest.mark.parametrize("where", [".sha256", ".reserved", ".locks"])
def test_a_cache_bookkeeping_file_that_cannot_be_written_is_a_disk_error(
        server, tmp_path, monkeypatch, where) -> None:
    """The disk fills up (ENOSPC) when the cache writes one of its own small files
    besides the model: the checksum record after the download (``.sha256``),
    the reservation (``.reserved``) or a lock file (``.locks``). Before: a raw
    ``OSError: [Errno 28] No space left on device: '<path>'`` escaped (not a
    ConnectorError: the job failed for good, not retried on another machine),
    the record case leaving an unrecorded model file behind that the cache
    then neither counted nor evicted. Now it is the ``service`` error a full disk
    gives on the model file, naming the file and the reason, and nothing of
    the model is left behind."""
    import errno
    import io

    from machine.models import cache as cache_module

    def full(path: object) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    write_text, real_open = Path.write_text, io.open

    def failing_write_text(self: Path, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if where in self.parts:
            raise full(self)
        return write_text(self, *args, **kwargs)

    def failing_open(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if where in Path(path).parts:
            raise full(path)
        return real_open(path, *args, **kwargs)

    entry = _entry(server, "m")
    manager = _manager(tmp_path)
    monkeypatch.setattr(Path, "write_text", failing_write_text)
    monkeypatch.setattr(cache_module, "open", failing_open, raising=False)
    with pytest.raises(ConnectorError) as caught:
        _fetch(manager, entry)
    assert caught.value.error_type == ErrorType.SERVICE, caught.value.message
    assert "No space left on device" in caught.value.message
    assert str(tmp_path / where) in caught.value.message
    assert not (tmp_path / "m").exists()
    assert not list((tmp_path / ".parts").iterdir())
    assert not list((tmp_path / ".reserved").iterdir())


def test_a_failure_note_that_cannot_be_written_keeps_the_download_s_error(
        server, tmp_path, monkeypatch) -> None:
    """A download fails its checksum (a ``model`` error) on a full disk, where the
    note for the waiting processes (``.failed/<name>``) cannot be written.
    Before: the raw OSError of the note replaced the checksum error. Now the
    job gets the checksum error (the note is best effort: without it a waiting
    process downloads once more)."""
    import errno

    write_text = Path.write_text

    def failing_write_text(self: Path, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if ".failed" in self.parts:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    entry = _entry(server, "bad")
    server.corrupt.add("bad")
    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(ConnectorError) as caught:
        _fetch(_manager(tmp_path), entry)
    assert caught.value.error_type == ErrorType.MODEL and "sha256" in caught.value.message


@pytest.mark.parametrize("victim_lock", ["use", "download"])
def test_a_lock_file_error_while_making_room_names_the_model_being_prepared(
        server, tmp_path, victim_lock) -> None:
    """Tried: a job needs model ``a``, the budget holds one model, and ``b`` (idle)
    must be evicted; opening ``b``'s lock file fails (its ``use`` lock when
    checking the model, its ``download`` lock when evicting an idle part of
    ``b``). A directory at the lock's path stands in for the disk error (a full
    disk creating it, too many open files), since it fails for root too.
    Before, the job's ``service`` error said ``model b cannot be kept in the
    model cache`` (and its details ``model: b``): the model kept fine, and not
    the one the job needs. Now it names ``a``, the model that cannot be kept,
    and still the lock file that failed."""
    a, b = _entry(server, "a"), _entry(server, "b")
    manager = _manager(tmp_path, budget=SIZE + 1000)
    if victim_lock == "use":
        _fetch(manager, b)
    else:  # a killed worker's download of b: its part is idle, evicted for a
        manager.cache.part("b", b.sha256).write_bytes(server.files["b"][:SIZE // 2])
    lock = tmp_path / ".locks" / f"b.{victim_lock}"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    with pytest.raises(ConnectorError) as caught:
        _fetch(manager, a)
    assert caught.value.error_type == ErrorType.SERVICE, caught.value.message
    assert caught.value.message.startswith("model a cannot be kept"), caught.value.message
    assert str(lock) in caught.value.message and caught.value.details["model"] == "a"
    assert not list((tmp_path / ".reserved").iterdir())


def _unreadable(path: Path) -> int:
    """Make ``path`` a file-sized thing that cannot be read: a directory (``open``
    fails with EISDIR, for root too, where chmod stops nothing). Its size,
    for a catalog entry that matches it (nonzero: one entry inside)."""
    path.mkdir()
    (path / "x").write_text("")
    size = path.stat().st_size
    assert size > 0
    return size


def test_a_model_file_that_cannot_be_read_for_its_checksum_is_a_service_error(
        server, tmp_path) -> None:
    """Tried: a file of the model's name and size the cache has not verified (an
    operator's, or one from before the checksum records) is hashed to adopt it,
    and reading it fails (a directory stands in for EIO from a failing disk or
    a file that cannot be opened). Before, a raw ``IsADirectoryError`` escaped
    the preparation: not a ConnectorError, so the job failed for good. Now it
    is a ``service`` error naming the file: this machine's disk, so the job is
    retried (maybe on another machine). Not ``model``: the catalog entry and its
    server are fine. Nothing is downloaded over the file."""
    manager = _manager(tmp_path)
    entry = parse_entry("m", server.add("m", _unreadable(tmp_path / "m")))
    with pytest.raises(ConnectorError) as caught:
        _fetch(manager, entry)
    assert caught.value.error_type == ErrorType.SERVICE, caught.value.message
    assert str(tmp_path / "m") in caught.value.message
    assert "Is a directory" in caught.value.message
    assert not server.requests_for("m")


@pytest.mark.parametrize("whole", [True, False])
def test_a_part_that_cannot_be_read_for_its_checksum_is_a_service_error(
        server, tmp_path, whole) -> None:
    """Tried: a download finds its ``.part`` already there, all of it (``whole``: a
    worker killed between the last byte and the install) or some (a resume),
    and reading it back for the SHA-256 fails (a directory stands in for EIO).
    Before, a raw ``IsADirectoryError`` escaped ``fetch``: the job failed for
    good, and processes waiting for the download downloaded again. Now it is
    the ``service`` error a write error on the part gives, naming the part: the
    machine's disk, retried, not a ``model`` error (the bytes were never
    compared, so nothing says the catalog entry is wrong; no ``.failed`` note
    for the waiting processes)."""
    manager = _manager(tmp_path)
    holder = tmp_path / ".parts" / "holder"
    size = _unreadable(holder)
    entry = parse_entry("m", server.add("m", size if whole else size + 1000))
    part = manager.cache.part("m", entry.sha256)
    holder.rename(part)
    with pytest.raises(ConnectorError) as caught:
        _fetch(manager, entry)
    assert caught.value.error_type == ErrorType.SERVICE, caught.value.message
    assert str(part) in caught.value.message and "Is a directory" in caught.value.message
    assert not server.requests_for("m") and not (tmp_path / "m").exists()
    assert manager.cache.failure("m", entry.sha256, 0) is None


def test_downloads_are_counted_for_the_machine_across_processes(server, tmp_path,
                                                                monkeypatch) -> None:
    """Three worker processes want one model, then one gets a corrupt file: the machine's
    counters (what its /status and /metrics read) show one download done of SIZE bytes
    and one failed, and the cache's size read without opening it. Before, downloads were
    counted nowhere the machine could read."""
    counters = tmp_path / "counters"
    monkeypatch.setenv(COUNTERS_ENV, str(counters))
    entry = _entry(server, "shared")
    _run_in_three_children(_ready_in_child, tmp_path, entry, timeout=60)
    bad = _entry(server, "bad")
    server.corrupt.add("bad")
    with pytest.raises(ConnectorError):
        _fetch(_manager(tmp_path / "cache"), bad)
    downloads = read_counters(counters)["downloads"]
    assert (downloads["completed"], downloads["failed"], downloads["bytes"]) == (1, 1, SIZE)
    assert downloads["seconds"] > 0
    assert used_bytes(tmp_path / "cache") == SIZE
    assert used_bytes(tmp_path / "nowhere") == 0
