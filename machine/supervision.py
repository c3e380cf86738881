"""Run supervisord as a child of ``emp machine`` and talk to it over its XML-RPC socket.

``Supervisord`` starts ``supervisord -n`` (non-daemon) through ``machine.lifeline``
so it dies with the machine process, waits for its socket, and stops it
(which stops every program, each with its process group). ``SupervisorClient``
wraps the few XML-RPC calls the runtime needs; each call opens its own
connection, so the health server's threads and the status reporter can share
one client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping
from typing import Any

from supervisor.xmlrpc import Faults, SupervisorTransport

from machine.errors import MachineError, UnknownProgram
from machine.lifeline import write_spec
from machine.supervisor_conf import RunFiles

#: Process states of supervisor that count as up.
RUNNING = "RUNNING"
#: Largest log tail read for ``tail``, bytes.
MAX_TAIL_BYTES = 4 * 1024 * 1024


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


class Supervisord:
    """A supervisord child process for one run directory."""

    def __init__(self, files: RunFiles, env: Mapping[str, str]) -> None:
        self.files = files
        self.env = dict(env)
        self.client = SupervisorClient(files.socket)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def output_path(self) -> os.PathLike[str]:
        return self.files.log_dir / "supervisord.out"

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
        with open(self.output_path, "ab") as output:
            self.process = subprocess.Popen(argv, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
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
            return process.returncode if process else None
        try:
            self.client.shutdown()
        except (MachineError, xmlrpc.client.Error):
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait(timeout=10)

    def _output_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.output_path, "rb") as output:
                return output.read()[-limit:].decode(errors="replace").strip()
        except OSError:
            return "(no output)"
