"""Fixtures: a real Redis server per test module, real worker and web service processes."""

from __future__ import annotations

import fcntl
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from capability_router.functions import QueueFunctions, ensure_library
from capability_router.keys import Keys, idle_workers
from emp_tasks.app import create_app
from emp_tasks.local_redis import LocalRedis, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test finds a developer's running `emp up`: its record lives in XDG_STATE_HOME."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A Redis server of this test module, append-only file on, on a free port."""
    server = LocalRedis(tmp_path_factory.mktemp("redis"), appendonly=True, fsync_always=True)
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def freeze(redis_server: LocalRedis) -> Iterator[Callable[[bool], None]]:
    """``freeze(True)`` stops the module's Redis (SIGSTOP), ``freeze(False)`` continues it;
    continued at the end whatever happened."""
    assert redis_server.process is not None
    pid = redis_server.process.pid

    def freeze(stopped: bool) -> None:
        os.kill(pid, signal.SIGSTOP if stopped else signal.SIGCONT)

    try:
        yield freeze
    finally:
        os.kill(pid, signal.SIGCONT)


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
    # A test's AsyncResults unsubscribe from their result channels when collected. Collect
    # them now, while this module's server is up: collected later, after it stopped, each
    # blocks whatever test the collector interrupts for Celery's 20 reconnect tries (20 s).
    gc.collect()
    app.close()


class WorkerProcess:
    """An ``emp worker`` subprocess (with ``plain_celery``: ``celery -A emp_tasks.app worker``)."""

    def __init__(self, url: str, log_dir: Path, worker_id: str, env: dict[str, str],
                 args: list[str], plain_celery: bool = False) -> None:
        self.url, self.worker_id = url, worker_id
        self.log_path = log_dir / f"{worker_id}-{time.monotonic_ns()}.log"
        full_env = {**os.environ, "EMP_REDIS_URL": url, "WORKER_ID": worker_id,
                    "WORKER_SERVICES": "echo,simulation", "EMP_LEASE_SECONDS": "2",
                    "PYTHONPATH": str(ROOT), **env}
        command = (["celery", "-A", "emp_tasks.app"] if plain_celery
                   else ["emp_tasks.cli"])
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *command, "worker", "-l", "warning", "-c", "1", *args],
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
              plain_celery: bool = False, **env: str) -> WorkerProcess:
        worker = WorkerProcess(redis_server.url, tmp_path, worker_id, env, args or [],
                               plain_celery)
        started.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def jobs_env(tmp_path: Path) -> Callable[[str, str], dict[str, str]]:
    """Factory: the environment of a worker that also imports the job definitions
    ``source``, written as module ``name`` beside a Celery config naming it
    (``EMP_CELERY_CONFIG``); pass it to ``start_worker(..., **env)``."""

    def env(name: str, source: str) -> dict[str, str]:
        (tmp_path / f"{name}.py").write_text(source)
        (tmp_path / f"{name}_config.py").write_text(f"imports = [{name!r}]\n")
        return {"PYTHONPATH": f"{ROOT}:{tmp_path}", "EMP_CELERY_CONFIG": f"{name}_config"}

    return env


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
                raise RuntimeError(f"{self.command} exited: {self.log_tail()}")
            try:
                if requests.get(self.base + "/health", timeout=1).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or listening but still loading (slow under load)
            time.sleep(0.1)
        raise TimeoutError(f"{self.command} did not answer /health: {self.log_tail()}")

    def log(self) -> str:
        """The whole log: a count or a "not in" over a tail would miss earlier lines."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        """The log's end, for an error message."""
        return self.log()[-chars:]

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
    # SIGKILL, not a graceful stop: no test asserts anything after its end (a test that
    # wants a graceful stop calls ``stop()`` itself), and gunicorn's gevent worker notices
    # a SIGTERM only at its next one-second tick: ~1.5 s of every test with an API.
    for server in started:
        server.kill()


#: Environment of every test machine: fast reports, short leases, JSON logs with deployment.
FAST = {
    "EMP_MACHINE_REPORT_SECONDS": "1", "EMP_MACHINE_POLL_SECONDS": "0.25",
    "EMP_LEASE_SECONDS": "2", "EMP_STOP_WAIT_SECONDS": "10", "EMP_WORKER_LOGLEVEL": "info",
    "EMP_DEPLOYMENT_ENV": "ci", "EMP_REGION": "local-1", "EMP_CLOUD_PROVIDER": "test-cloud",
    "EMP_INSTANCE_ID": "i-test",
}


class MachineProcess:
    """An ``emp machine`` subprocess with its own run directory and health port."""

    def __init__(self, url: str, tmp_path: Path, machine_id: str, env: dict[str, str],
                 args: list[str] | None = None) -> None:
        self.machine_id = machine_id
        self.run_dir = tmp_path / f"run-{machine_id}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output = tmp_path / f"{machine_id}.out"
        full_env = {
            **os.environ, "EMP_REDIS_URL": url, "MACHINE_ID": machine_id,
            "EMP_MOCK_GPUS": "2", "WORKERS": "simulation:auto", "EMP_HEALTH_HOST": "127.0.0.1",
            "EMP_HEALTH_PORT": str(self.port), "EMP_MACHINE_RUN_DIR": str(self.run_dir),
            "PYTHONPATH": str(ROOT), **FAST, **env,
        }
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emp_tasks.cli", "machine", *(args or [])],
                env=full_env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base + path, timeout=10, **kwargs)

    def refused(self, what: str, timeout: float = 60.0) -> tuple[int, str]:
        """The exit status and output of a machine expected to stop at its start; the
        test fails, naming ``what`` it was started with, if it keeps running."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"emp machine kept running with {what}: {self.tail()}")
        return code, self.tail()

    def post(self, path: str) -> requests.Response:
        return requests.post(self.base + path, timeout=30)

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"emp machine exited {self.process.returncode}: {self.tail()}")
            try:
                reply = self.get("/ready")
                body = reply.json()
                if reply.status_code == 200:
                    return body
            except requests.RequestException:
                pass
            time.sleep(0.1)
        pytest.fail(f"machine {self.machine_id} not ready: {body} {self.tail()}")

    def wait_up(self, timeout: float = 60.0) -> None:
        """Wait until the health server answers (not until the workers are ready)."""
        def answers() -> bool:
            try:
                return self.get("/health").status_code == 200
            except requests.RequestException:
                return self.process.poll() is not None and pytest.fail(self.tail())
        wait_for(answers, timeout=timeout, every=0.1, message=f"{self.machine_id} /health")

    def worker(self, name: str) -> dict[str, Any]:
        """The worker's entry of /status; {} while /status is unavailable (503)."""
        reply = self.get("/status")
        if reply.status_code != 200:
            return {}
        return next(w for w in reply.json()["workers"] if name in (w["name"], w["worker_id"]))

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]

    def log_lines(self, program: str) -> list[dict[str, Any]]:
        """The JSON lines of a program's log file (Celery's banner is not JSON)."""
        text = (self.run_dir / "logs" / f"{program}.log").read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def leftovers(self) -> list[int]:
        """Live processes of this machine: their environment names its run directory."""
        marker = str(self.run_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def stop(self, timeout: float = 60.0) -> int:
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the machine's process group: ``emp machine`` itself, nothing else."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def cleanup(self) -> None:
        if self.process.poll() is None:
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def start_machine(redis_server: LocalRedis, client: redis.Redis,
                  tmp_path: Path) -> Iterator[Callable[..., MachineProcess]]:
    """Factory: start ``emp machine`` with extra environment; every process is gone after."""
    machines: list[MachineProcess] = []

    def start(machine_id: str, url: str | None = None, **env: str) -> MachineProcess:
        machine = MachineProcess(url or redis_server.url, tmp_path, machine_id, env)
        machines.append(machine)
        return machine

    yield start
    for machine in machines:
        machine.cleanup()


#: Debian's Chromium; Playwright drives it, nothing is downloaded at run time.
CHROMIUM = os.environ.get("EMP_CHROMIUM", "/usr/bin/chromium")
#: Headless, and quiet on a closed network: no background fetches, updates, sync or QUIC.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
#: Why the browser tests cannot run (one line), or None once Chromium is there.
_chromium_missing: str | None = None


def install_chromium() -> str | None:
    """Install Debian's chromium with apt-get when it is missing; None on success, else why.

    Runs as root only (the README's test command on a fresh Debian machine or CI image);
    ``apt-get update`` first when the package lists are stale. Waits for another apt, and
    for the other test processes (pytest-xdist): one installs, the rest find it there.
    """
    with open(Path(tempfile.gettempdir()) / "emp-tests-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install_chromium()


def _install_chromium() -> str | None:
    if Path(CHROMIUM).exists():
        return None
    hint = f"no Chromium at {CHROMIUM}: run `sudo apt-get install chromium` or set EMP_CHROMIUM"
    if "EMP_CHROMIUM" in os.environ or os.geteuid() != 0 or not shutil.which("apt-get"):
        return hint
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q"]
    install = [*apt, "install", "-y", "--no-install-recommends", "chromium"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = ""
    for step in ([install], [["dpkg", "--configure", "-a"], [*apt, "update"], install]):
        for command in step:
            # Its own session: a Ctrl-C or a test timeout must not cut dpkg off half-way.
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  start_new_session=True, check=False)
            output = (done.stdout + done.stderr).strip()
        if done.returncode == 0 and Path(CHROMIUM).exists():
            return None
    last = output.splitlines()[-1] if output else "no output"
    return f"{hint} (apt-get install chromium failed: {last})"


#: Fixtures that start processes (workers, web services, machines, a browser): what makes
#: a test slow to run, so a test using one is not ``fast``.
PROCESS_FIXTURES = frozenset({"start_worker", "start_server", "start_machine", "browser"})


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``browser`` the tests that drive Chromium; ``fast`` those that are not ``slow``
    or ``system`` and start no process through the fixtures above (tox's pyXY-fast:
    ``pytest -m fast``)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)
        if not (fixtures & PROCESS_FIXTURES or item.get_closest_marker("slow")
                or item.get_closest_marker("system")):
            item.add_marker(pytest.mark.fast)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before the first test, outside any test's timeout: Chromium for the browser tests."""
    global _chromium_missing
    if Path(CHROMIUM).exists() or session.config.option.collectonly or not any(
            "browser" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"browser tests: installing Debian's chromium ({CHROMIUM})")
    _chromium_missing = install_chromium()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A real headless Chromium (Debian's package) driven by Playwright, per test module."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(_chromium_missing or install_chromium() or "", pytrace=False)
    with sync_playwright() as playwright:
        # Playwright starts it with a fresh temporary profile (user data directory).
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# -- webhook receivers ------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on a fixed port that can go down, come back, and fail on request.

    ``status`` is the answer: an int, or a callable of the request giving one.
    """

    def __init__(self, port: int | None = None) -> None:
        self.status: int | Callable[[Received], int] = 200
        self.requests: list[Received] = []
        self.server: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()
        self._held = self._hold(port or 0)
        self.port: int = self._held.getsockname()[1]

    @staticmethod
    def _hold(port: int) -> socket.socket:
        """A socket bound to the port but not listening: while the receiver is down its
        port refuses connections, and no other server (nor an outgoing connection's
        source port) can take it, which would answer the deliveries meant to fail."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # over TIME_WAIT
        sock.bind(("127.0.0.1", port))
        return sock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Received(self.path, dict(self.headers), body, 0)
                status = receiver.status
                request.status = status(request) if callable(status) else status
                with receiver.lock:
                    receiver.requests.append(request)
                self.send_response(request.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler,
                                     bind_and_activate=False)
        server.socket.close()
        server.socket, self._held = self._held, None
        server.server_activate()  # listen on the held socket
        self.server = server
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
            self._held = self._hold(self.port)

    def close(self) -> None:
        """Stop and give the port up."""
        self.stop()
        if self._held is not None:
            self._held.close()
            self._held = None

    def delivered(self, path: str | None = None) -> list[Received]:
        """Requests answered 2xx, first of each webhook-id, in arrival order."""
        seen, out = set(), []
        with self.lock:
            requests_ = list(self.requests)
        for request in requests_:
            if 200 <= request.status < 300 and request.headers["webhook-id"] not in seen and \
                    (path is None or request.path == path):
                seen.add(request.headers["webhook-id"])
                out.append(request)
        return out


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Factory: ``receiver(start=True)``; all stopped at the end."""
    made: list[Receiver] = []

    def make(start: bool = True) -> Receiver:
        sink = Receiver()
        made.append(sink)
        return sink.start() if start else sink

    yield make
    for sink in made:
        sink.close()
