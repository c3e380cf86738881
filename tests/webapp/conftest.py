"""Fixtures for the web services: ``emp api`` / ``emp webhooks`` as real
gunicorn processes on free ports, against the test module's Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from emp_tasks.local_redis import LocalRedis, free_port

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``emp <command> --port P`` in its own process group."""

    def __init__(self, command: str, url: str, log_dir: Path, env: dict[str, str],
                 port: int | None = None) -> None:
        self.command, self.redis_url = command, url
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_base = f"ws://127.0.0.1:{self.port}"
        self.env = {**os.environ, "EMP_REDIS_URL": url, "PYTHONPATH": str(ROOT), **env}
        self.log_path = log_dir / f"{command}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emp_tasks.cli", self.command, "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited: {self.log()}")
            try:
                if requests.get(self.base + "/health", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.command} did not answer /health: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@pytest.fixture
def start_server(
    redis_server: LocalRedis, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server("api", EMP_API_TOKENS=...)``; every server stopped at the end."""
    started: list[ServerProcess] = []

    def start(command: str, port: int | None = None, **env: str) -> ServerProcess:
        server = ServerProcess(command, redis_server.url, tmp_path, env, port)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
