"""Fixtures: a real Redis server per test module, real worker and web service processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from capability_router.functions import QueueFunctions, ensure_library
from capability_router.keys import Keys, idle_workers
from emp_tasks.app import create_app
from emp_tasks.local_redis import LocalRedis, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A Redis server of this test module, append-only file on, on a free port."""
    server = LocalRedis(tmp_path_factory.mktemp("redis"), appendonly=True, fsync_always=True)
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    """A client on an empty database that has the function library."""
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    client.flushall()
    ensure_library(client)
    yield client
    client.close()


@pytest.fixture
def queue(client: redis.Redis) -> QueueFunctions:
    """The function wrappers of the default namespace."""
    return QueueFunctions(client, "default")


@pytest.fixture
def app(redis_server: LocalRedis, client: redis.Redis):  # noqa: ANN201 - Celery app
    app = create_app(redis_server.url)
    yield app
    app.close()


class WorkerProcess:
    """An ``emp worker`` subprocess."""

    def __init__(self, url: str, log_dir: Path, worker_id: str, env: dict[str, str],
                 args: list[str]) -> None:
        self.url, self.worker_id = url, worker_id
        self.log_path = log_dir / f"{worker_id}-{time.monotonic_ns()}.log"
        full_env = {**os.environ, "EMP_REDIS_URL": url, "WORKER_ID": worker_id,
                    "WORKER_SERVICES": "echo,simulation", "EMP_LEASE_SECONDS": "2",
                    "PYTHONPATH": str(ROOT), **env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emp_tasks.cli", "worker", "-l", "warning",
                 "-c", "1", *args],
                env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, namespace: str = "default", timeout: float = 60.0) -> WorkerProcess:
        """Wait until the worker has asked for work once (it marked itself idle)."""
        client = redis.Redis.from_url(self.url, decode_responses=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if self.worker_id in idle_workers(client.zrange(Keys(namespace).idle, 0, -1)):
                return self
            time.sleep(0.05)
        log = self.log_path.read_text()[-3000:]
        raise TimeoutError(f"worker {self.worker_id} not ready: {log}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(
    redis_server: LocalRedis, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker with extra environment variables; all stopped at the end."""
    started: list[WorkerProcess] = []

    def start(worker_id: str = "w1", wait: bool = True, args: list[str] | None = None,
              **env: str) -> WorkerProcess:
        worker = WorkerProcess(redis_server.url, tmp_path, worker_id, env, args or [])
        started.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in started:
        worker.kill()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, every: float = 0.05,
             message: str = "condition") -> object:
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")


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
