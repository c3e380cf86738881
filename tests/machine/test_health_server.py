"""The health app's HTTP surface, on a stand-in runtime (the real one: test_machine_runtime)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from machine.errors import MachineError, UnknownProgram
from machine.gpus import GpuInventory
from machine.health import HealthServer, create_app
from machine.plan import MachinePlan, ProgramSpec
from machine.supervision import SupervisorClient, Supervisord
from machine.supervisor_conf import ProgramOptions, RunFiles, write_config


class StandIn:
    """Answers like a machine runtime with programs ``simulation-0`` and ``simulation-1``."""

    def __init__(self, token: str | None = None, ready: bool = True) -> None:
        self.health_token = token
        self.is_ready = ready
        self.restarted: list[str] = []

    def liveness(self) -> dict[str, Any]:
        return {"status": "ok", "machine_id": "box"}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        not_ready = [] if self.is_ready else [{"name": "simulation-1", "state": "STARTING"}]
        return self.is_ready, {"ready": self.is_ready, "not_ready": not_ready}

    def status(self) -> dict[str, Any]:
        return {"machine_id": "box", "workers": []}

    def program_names(self) -> list[str]:
        return ["simulation-0", "simulation-1"]

    def _check(self, name: str) -> str:
        known = {"simulation-0": "simulation-0", "box-simulation-0": "simulation-0",
                 "simulation-1": "simulation-1"}
        if name not in known:
            raise UnknownProgram(name)
        return known[name]

    def tail(self, name: str, lines: int) -> list[str]:
        self._check(name)
        return [f"line {i}" for i in range(lines)]

    def restart(self, name: str) -> dict[str, Any]:
        self.restarted.append(self._check(name))
        return {"state": "RUNNING", "pid": 4242}


def test_routes() -> None:
    client = create_app(StandIn()).test_client()
    assert client.get("/health").json == {"status": "ok", "machine_id": "box"}
    assert client.get("/ready").status_code == 200
    assert client.get("/status").json["machine_id"] == "box"
    assert client.get("/logs/simulation-0?lines=3").json == {
        "service": "simulation-0", "lines": ["line 0", "line 1", "line 2"]}
    assert len(client.get("/logs/box-simulation-0").json["lines"]) == 100
    reply = client.post("/restart/simulation-1")
    assert reply.status_code == 200 and reply.json["pid"] == 4242 and reply.json["restarted"]


def test_not_ready_is_503_with_the_reasons() -> None:
    reply = create_app(StandIn(ready=False)).test_client().get("/ready")
    assert reply.status_code == 503 and reply.json["not_ready"][0]["name"] == "simulation-1"


@pytest.mark.parametrize(("method", "path"), [("get", "/logs/nope"), ("post", "/restart/nope")])
def test_unknown_service_is_404_json(method: str, path: str) -> None:
    reply = getattr(create_app(StandIn()).test_client(), method)(path)
    assert reply.status_code == 404
    assert reply.json == {"error": "unknown service 'nope'",
                          "services": ["simulation-0", "simulation-1"]}


@pytest.mark.parametrize("lines", ["0", "-1", "ten", "10001", "\u00b2", "9" * 5000])
def test_bad_line_counts_are_400(lines: str) -> None:
    """Tried: ``?lines=²`` (a superscript two, which str.isdigit accepts) and a
    5000-digit count (past Python's int-from-string limit) were each a 500 with a
    ValueError traceback in the machine's log; now every bad count is a 400."""
    reply = create_app(StandIn()).test_client().get(f"/logs/simulation-0?lines={lines}")
    assert reply.status_code == 400 and "lines must be" in reply.json["error"]


def test_a_repeated_line_count_is_400() -> None:
    """Tried: ``?lines=3&lines=500``. Before, the first count was used and the other
    dropped without a word (the REST API refuses a repeated parameter); now a 400 naming
    it."""
    reply = create_app(StandIn()).test_client().get("/logs/simulation-0?lines=3&lines=500")
    assert reply.status_code == 400
    assert reply.json == {"error": "lines: given 2 times; send it once"}


def test_a_token_guards_logs_and_restarts_only() -> None:
    machine = StandIn(token="s3cret")
    client = create_app(machine).test_client()
    assert client.get("/logs/simulation-0").status_code == 401
    assert client.post("/restart/simulation-0",
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert machine.restarted == []
    assert client.post("/restart/simulation-0",
                       headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/status").status_code == 200


def test_a_non_ascii_token_is_a_401_not_a_500() -> None:
    """Tried: ``Authorization: Bearer é`` (a pasted token with an accent): hmac's
    compare_digest refuses non-ASCII str, so the server answered 500 with a TypeError
    traceback instead of 401. A token that itself has non-ASCII characters works."""
    client = create_app(StandIn(token="s3cret")).test_client()
    assert client.get("/logs/simulation-0",
                      headers={"Authorization": "Bearer \u00e9"}).status_code == 401
    accented = create_app(StandIn(token="s\u00e9cret")).test_client()
    assert accented.get("/logs/simulation-0", headers={
        "Authorization": "Bearer s\u00e9cret".encode().decode("latin-1")}).status_code == 200


def test_served_over_real_http() -> None:
    server = HealthServer(StandIn(), "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert requests.get(f"{base}/health", timeout=5).json()["status"] == "ok"
        assert requests.get(f"{base}/logs/x", timeout=5).status_code == 404
    finally:
        server.stop()


class Broken(StandIn):
    """A runtime whose status read fails in a way the app does not expect."""

    def status(self) -> dict[str, Any]:
        raise RuntimeError("boom")


def test_an_unknown_path_a_wrong_method_and_a_crash_answer_json() -> None:
    """Tried, over real HTTP: GET /nope, POST /health, DELETE /ready, and /status on a
    runtime whose status read raises. Each was Flask's HTML page (404, 405 without the
    app's JSON, 500), the only non-JSON answers of the health server; now each is
    ``{"error": ...}`` JSON, the 405 with its ``Allow``, and the server keeps answering."""
    server = HealthServer(Broken(), "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        for method, path, status in (("get", "/nope", 404), ("post", "/health", 405),
                                     ("delete", "/ready", 405), ("get", "/status", 500)):
            reply = getattr(requests, method)(base + path, timeout=5)
            assert reply.status_code == status
            assert reply.headers["Content-Type"] == "application/json", reply.text
            assert set(reply.json()) == {"error"}, reply.text
        assert "GET" in requests.post(f"{base}/health", timeout=5).headers["Allow"]
        assert requests.get(f"{base}/status", timeout=5).json() == {"error": "internal error"}
        assert requests.get(f"{base}/health", timeout=5).json()["status"] == "ok"
    finally:
        server.stop()


class OnSupervisor(StandIn):
    """A stand-in whose restarts and logs go to a real supervisord."""

    def __init__(self, client: SupervisorClient) -> None:
        super().__init__()
        self.client = client

    def tail(self, name: str, lines: int) -> list[str]:
        return self.client.tail(name, lines)

    def restart(self, name: str) -> dict[str, Any]:
        return self.client.restart(name)


def test_restarting_a_program_that_cannot_start_is_a_503_saying_why(tmp_path: Path) -> None:
    """Tried: a ComfyUI that exits at once (bad COMFYUI_COMMAND) until supervisor gave
    up on it (FATAL), then ``POST /restart/comfyui-server-0`` to try again: a 500 with
    an xmlrpc Fault traceback in the machine's log. Now a 503 naming supervisor's error."""
    files = RunFiles.in_dir(tmp_path)
    crasher = ProgramSpec("crasher", "service", "comfyui", ["sh", "-c", "echo boom; exit 3"])
    write_config(MachinePlan("box", GpuInventory("none"), [crasher]), files,
                 ProgramOptions(1024 * 1024, 1, 1, 0))
    supervisord = Supervisord(files, dict(os.environ)).start()
    try:
        deadline = time.monotonic() + 10
        while supervisord.client.process("crasher")["statename"] != "FATAL":
            assert time.monotonic() < deadline, "crasher never became FATAL"
            time.sleep(0.05)
        client = create_app(OnSupervisor(supervisord.client)).test_client()
        reply = client.post("/restart/crasher")
        assert reply.status_code == 503, reply.data
        assert "could not restart crasher" in reply.json["error"]
        assert "boom" in client.get("/logs/crasher?lines=5").json["lines"]
    finally:
        supervisord.stop()


def test_logs_and_status_while_supervisord_shuts_down_are_503(tmp_path: Path) -> None:
    """Tried: ``/ready``, ``/status`` and ``/logs`` while the machine was stopping (its
    workers taking their stop wait to hand jobs back): supervisord answers every call
    with a SHUTDOWN_STATE fault, which escaped as a 500 with a traceback. Now a 503
    saying supervisord is shutting down, as when it does not answer at all."""
    files = RunFiles.in_dir(tmp_path)
    stubborn = ProgramSpec("stubborn", "worker", "simulation",
                           ["sh", "-c", "trap '' TERM; echo armed; while true; do sleep 0.1; done"])
    write_config(MachinePlan("box", GpuInventory("none"), [stubborn]), files,
                 ProgramOptions(1024 * 1024, 1, 1, 0))
    supervisord = Supervisord(files, dict(os.environ)).start()
    try:
        deadline = time.monotonic() + 10
        while "armed" not in supervisord.client.tail("stubborn", 5):
            assert time.monotonic() < deadline, "stubborn never started"
            time.sleep(0.05)
        supervisord.client.shutdown()  # stubborn ignores TERM: a second of shutting down
        with pytest.raises(MachineError, match="shutting down"):
            supervisord.client.processes()
        reply = create_app(OnSupervisor(supervisord.client)).test_client().get("/logs/stubborn")
        assert reply.status_code == 503 and "shutting down" in reply.json["error"]
        # A machine started meanwhile in the same run directory leaves its socket alone.
        with pytest.raises(MachineError, match="is stopping"):
            Supervisord(files, {}).claim_socket()
        assert files.socket.exists()
    finally:
        supervisord.stop()
