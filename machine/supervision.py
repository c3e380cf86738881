"""Run supervisord as a child of ``emp machine`` and talk to it over its XML-RPC socket.

``Supervisord`` starts ``supervisord -n`` (non-daemon) through ``machine.lifeline``
so it dies with the machine process, waits for its socket, and stops it
(which stops every program, each with its process group). ``SupervisorClient``
wraps the few XML-RPC calls the runtime needs; each call opens its own
connection, so the health server's threads and the status reporter can share
one client.

supervisord writes its log to stdout, a pipe; ``OutputCopy`` copies it to
``logs/supervisord.log``. supervisord used to write that file itself: on a full
disk its next log line failed, printing that failure to its stderr (a file on the
same disk) failed too, and the exception ended supervisord and every worker. The
copy reads the pipe in one thread and writes the file in another, through a bounded
queue, so a disk that stops answering cannot stop the pipe being drained either.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from supervisor.xmlrpc import Faults, SupervisorTransport

from machine.errors import MachineError, UnknownProgram
from machine.lifeline import write_spec
from machine.settings import LOG_BACKUPS, LOG_MAX_BYTES
from machine.supervisor_conf import RunFiles

logger = logging.getLogger("emp.machine")

#: Process states of supervisor that count as up.
RUNNING = "RUNNING"
#: Largest log tail read for ``tail``, bytes.
MAX_TAIL_BYTES = 4 * 1024 * 1024
#: supervisord's last output kept in memory for a start-up error, bytes.
OUTPUT_TAIL_BYTES = 8192
#: Longest piece of output without a line end written as one line, bytes.
MAX_LINE_BYTES = 64 * 1024
#: supervisord's output read from its pipe and waiting for the log file, bytes at most
#: (plus the line being written): 1 MiB, minutes of supervisord's usual output, so a slow
#: disk loses nothing, and little memory when the disk stops answering.
QUEUE_BYTES = 1024 * 1024


class ShuttingDown(MachineError):
    """supervisord answers, but only that it is shutting down (SHUTDOWN_STATE)."""


class SupervisorClient:
    """supervisord's XML-RPC interface over a unix socket."""

    def __init__(self, socket_path: str | os.PathLike[str]) -> None:
        self.socket_path = str(socket_path)

    def _proxy(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _call(self, method: str, *args: Any) -> Any:
        """Call ``supervisor.<method>``.

        A BAD_NAME fault becomes UnknownProgram, a dead socket and a supervisord
        shutting down (it faults every call meanwhile, a 500 of the health server
        while the machine stopped) MachineError; other faults stay
        ``xmlrpc.client.Fault`` for the caller to judge.
        """
        proxy = self._proxy()
        try:
            return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.BAD_NAME and args:
                raise UnknownProgram(args[0]) from None
            if fault.faultCode == Faults.SHUTDOWN_STATE:
                raise ShuttingDown("supervisord is shutting down (the machine is "
                                   "stopping)") from None
            raise
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise MachineError(f"supervisord does not answer: {exc}") from None
        finally:
            proxy("close")()

    def state(self) -> str:
        """supervisord's own state name (``RUNNING``, ``SHUTDOWN``, ...)."""
        return self._call("getState")["statename"]

    def processes(self) -> list[dict[str, Any]]:
        """``getAllProcessInfo``: name, statename, pid, start, now, exitstatus, spawnerr, ..."""
        return self._call("getAllProcessInfo")

    def process(self, name: str) -> dict[str, Any]:
        return self._call("getProcessInfo", name)

    def start_program(self, name: str) -> None:
        """Start a stopped or FATAL program without waiting for it."""
        try:
            self._call("startProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.ALREADY_STARTED:
                raise MachineError(f"supervisor could not start {name}: "
                                   f"{fault.faultString}") from None

    def restart(self, name: str) -> dict[str, Any]:
        """Stop ``name`` if it runs, start it, and return its new info (waits for RUNNING).

        A start that fails (a program that exits at once, FATAL or not) is a
        MachineError saying so: from a stopped or FATAL program it used to escape as
        a bare xmlrpc Fault, a 500 of the health server.
        """
        try:
            self._call("stopProcess", name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                raise MachineError(f"supervisor could not restart {name}: "
                                   f"{fault.faultString}") from None
        try:
            self._call("startProcess", name, True)
        except xmlrpc.client.Fault as fault:
            raise MachineError(f"supervisor could not restart {name}: "
                               f"{fault.faultString}") from None
        return self.process(name)

    def tail(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the program's log (stdout and stderr)."""
        length = min(max(lines * 256, 4096), MAX_TAIL_BYTES)
        while True:
            text, _offset, overflow = self._call("tailProcessStdoutLog", name, 0, length)
            found = text.splitlines()
            if len(found) > lines or not overflow or length >= MAX_TAIL_BYTES:
                return found[-lines:] if lines else []
            length = min(length * 4, MAX_TAIL_BYTES)

    def shutdown(self) -> None:
        self._call("shutdown")


def tail_file(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (at most ``MAX_TAIL_BYTES`` of its end);
    [] when it does not exist yet."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - MAX_TAIL_BYTES))
            found = file.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return found[-lines:] if lines else []


class OutputCopy:
    """Copy supervisord's output from a pipe to a log file rotated like the programs' logs.

    Two threads: one reads the pipe into a queue of lines, the other writes them to
    the file. The pipe is drained whatever the disk does: when the disk stops
    answering (a write that blocks, not fails) a single thread stopped reading, the
    pipe's 64 KiB filled and supervisord blocked on its own output, supervising
    nothing. A line that cannot be queued (``QUEUE_BYTES`` are waiting for the
    writer) or written (a full disk) is dropped and counted in ``dropped_bytes``,
    with one warning when dropping starts and one line when it stops. The last
    ``OUTPUT_TAIL_BYTES`` stay in memory for the error of a supervisord that exits
    at start.
    """

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES,
                 backups: int = LOG_BACKUPS,
                 on_line: Callable[[bytes], object] | None = None) -> None:
        self.path = path
        self.on_line = on_line
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped_bytes = 0
        self._file: IO[bytes] | None = None
        self._size = 0
        self._failing = False
        self._stalled = False
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._queue: deque[bytes | None] = deque()  # None: the pipe's end
        self._queued = 0
        self._ready = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []

    @property
    def queued_bytes(self) -> int:
        """Lines read from the pipe and not yet handed to the file."""
        return self._queued

    def start(self, pipe: IO[bytes]) -> OutputCopy:
        """Copy ``pipe`` until its end (supervisord exited) in two daemon threads."""
        self._threads = [
            threading.Thread(target=self._read, args=(pipe,), name="emp-supervisord-output",
                             daemon=True),
            threading.Thread(target=self._drain, name="emp-supervisord-log", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for the pipe's end to be written."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def tail(self, limit: int = 2000) -> str:
        """supervisord's last output (at most ``limit`` bytes) as text."""
        with self._lock:
            data = bytes(self._tail[-limit:])
        return data.decode(errors="replace").strip() or "(no output)"

    def _read(self, pipe: IO[bytes]) -> None:
        """Read the pipe into the queue; never waits for the file."""
        pending = b""
        try:
            with pipe:
                while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
                    with self._lock:
                        self._tail += chunk
                        del self._tail[:-OUTPUT_TAIL_BYTES]
                    *lines, pending = (pending + chunk).split(b"\n")
                    if len(pending) > MAX_LINE_BYTES:
                        lines, pending = [*lines, pending], b""
                    for line in lines:
                        self._heard(line)
                        self._put(line + b"\n")
            if pending:
                self._put(pending)
        finally:
            with self._ready:
                self._queue.append(None)
                self._ready.notify()

    def _heard(self, line: bytes) -> None:
        """Show ``line`` to ``on_line`` (the machine's exit log); nothing it raises stops
        the copy."""
        if self.on_line is not None:
            try:
                self.on_line(line)
            except Exception:  # noqa: BLE001 - the pipe must be drained whatever happens
                logger.debug("on_line failed", exc_info=True)

    def _put(self, line: bytes) -> None:
        """Queue ``line``, or drop it while the writer is ``QUEUE_BYTES`` behind.

        Dropping stops once half the queue has been written, so a writer that
        barely keeps up does not warn at every line.
        """
        with self._ready:
            resumed = self._stalled and self._queued <= QUEUE_BYTES // 2
            if resumed:
                self._stalled = False
            stalled = not self._stalled and self._queued + len(line) > QUEUE_BYTES
            if stalled:
                self._stalled = True
            if self._stalled:
                self.dropped_bytes += len(line)
            else:
                self._queue.append(line)
                self._queued += len(line)
                self._ready.notify()
            dropped = self.dropped_bytes
        if resumed:
            logger.info("writing supervisord's log %s again; %d bytes dropped so far",
                        self.path, dropped, extra={"event": "machine_log_writable"})
        if stalled:
            logger.warning("supervisord's log %s takes no writes (%d bytes waiting; its disk "
                           "does not answer?); its lines are dropped until it does "
                           "(supervisord and the workers run on)", self.path, QUEUE_BYTES,
                           extra={"event": "machine_log_stalled"})

    def _drain(self) -> None:
        """Write queued lines to the file until the pipe's end."""
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                line = self._queue.popleft()
                if line is not None:
                    self._queued -= len(line)
            if line is None:
                break
            self._write(line)
        self._close()

    def _write(self, line: bytes) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
                self._size = os.fstat(self._file.fileno()).st_size
            if 0 < self.max_bytes < self._size + len(line) and self._size:
                self._rotate()
            view = memoryview(line)
            while view:
                view = view[self._file.write(view) or 0:]
            self._size += len(line)
        except Exception as exc:  # noqa: BLE001 - an OSError mostly; nothing may stop the copy
            with self._lock:
                self.dropped_bytes += len(line)
            self._close()
            if not self._failing:
                self._failing = True
                logger.warning("cannot write supervisord's log %s: %s; its lines are dropped "
                               "until it can (supervisord and the workers run on)", self.path,
                               exc, extra={"event": "machine_log_unwritable"})
            return
        if self._failing:
            self._failing = False
            logger.info("writing supervisord's log %s again; %d bytes dropped so far",
                        self.path, self.dropped_bytes, extra={"event": "machine_log_writable"})

    def _rotate(self) -> None:
        """supervisor's scheme: ``log`` -> ``log.1`` -> ... -> ``log.<backups>``."""
        self._close()
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                if os.path.lexists(f"{self.path}.{n}"):
                    os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115
        self._size = 0

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def remove_old_output(files: RunFiles) -> None:
    """Delete ``logs/supervisord.out`` left by an older release, saying so.

    supervisord's stdout went there, appended at every start and never rotated;
    nothing writes or deletes it since its output goes to ``supervisord.log``. A file
    that cannot be deleted is a warning: the machine runs without it mattering.
    """
    path = files.log_dir / "supervisord.out"
    try:
        size = path.lstat().st_size
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.warning("cannot delete %s, left by an older release: %s", path, exc,
                       extra={"event": "machine_old_output_kept"})
        return
    logger.info("deleted %s (%d bytes), supervisord's output from an older release; it "
                "goes to supervisord.log now", path, size,
                extra={"event": "machine_old_output_deleted"})


class Supervisord:
    """A supervisord child process for one run directory.

    :param log_max_bytes: size at which ``logs/supervisord.log`` rotates (0: never).
    :param log_backups: rotated copies of it kept.
    :param on_line: called with each line of its output (``ExitLog.feed``).
    """

    def __init__(self, files: RunFiles, env: Mapping[str, str],
                 log_max_bytes: int = LOG_MAX_BYTES, log_backups: int = LOG_BACKUPS,
                 on_line: Callable[[bytes], object] | None = None) -> None:
        self.files = files
        self.env = dict(env)
        self.client = SupervisorClient(files.socket)
        self.process: subprocess.Popen[bytes] | None = None
        self.output = OutputCopy(files.supervisord_log, log_max_bytes, log_backups, on_line)

    def claim_socket(self) -> None:
        """Remove a socket left by a dead supervisord; MachineError if a live one serves it."""
        if not self.files.socket.exists():
            return
        try:
            self.client.state()
        except ShuttingDown:
            raise MachineError(f"a supervisord still serves {self.files.socket}: another "
                               "machine of this run directory is stopping; start this one "
                               "once it has stopped") from None
        except MachineError:
            self.files.socket.unlink()
            return
        raise MachineError(f"a supervisord already serves {self.files.socket}: "
                           "another machine uses this run directory")

    def start(self, timeout: float = 30.0) -> Supervisord:
        """Start supervisord and wait until it answers on its socket."""
        self.claim_socket()
        argv = write_spec(self.files.program_spec("supervisord"),
                          [sys.executable, "-m", "supervisor.supervisord", "-n",
                           "-c", str(self.files.config)])
        self.process = subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        assert self.process.stdout is not None
        self.output.start(self.process.stdout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MachineError(f"supervisord exited with {self.process.returncode}: "
                                   f"{self._output_tail()}")
            try:
                if self.client.state() == RUNNING:
                    return self
            except MachineError:
                pass
            time.sleep(0.05)
        self.stop()
        raise MachineError(f"supervisord did not answer within {timeout:.0f}s: "
                           f"{self._output_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop every program, then supervisord; SIGKILL after ``timeout``. Returns its code."""
        process = self.process
        if process is None or process.poll() is not None:
            self.output.join(timeout=5)
            return process.returncode if process else None
        try:
            self.client.shutdown()
        except (MachineError, xmlrpc.client.Error):
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait(timeout=10)
        self.output.join(timeout=5)
        return code

    def _output_tail(self) -> str:
        """supervisord's last output, from memory: the log file may be huge or unreadable."""
        self.output.join(timeout=2)
        return self.output.tail()
