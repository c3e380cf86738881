"""The whole system on one box (``emp up``): Redis, workers, API, webhooks, monitor, a machine.

Uses the Redis URL it is given (``emp up`` passes ``--redis-url`` or
``EMP_REDIS_URL``); otherwise starts a local server with append-only
persistence in the data directory, on port 6390 (``defaults.LOCAL_REDIS_PORT``)
or, when that is taken, a free port. Every process logs to a file in the data
directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from capability_router.errors import EmpError
from capability_router.keys import Keys, idle_workers
from emp_tasks import defaults
from emp_tasks.connection import get_client
from emp_tasks.local_redis import LocalRedis, free_port, port_is_free
from emp_tasks.stack_pids import StackPids

#: Local workers of ``emp up``: different hardware and models, so matching shows.
LOCAL_WORKERS = [
    {"WORKER_GPU_MEMORY_GB": "24", "WORKER_MODELS": "sdxl,flux", "WORKER_REGION": "local-a"},
    {"WORKER_GPU_MEMORY_GB": "8", "WORKER_MODELS": "sd15", "WORKER_REGION": "local-b"},
]


def worker_env(index: int, url: str) -> dict[str, str]:
    """Environment of local worker ``index``."""
    env = dict(os.environ)
    env.update(LOCAL_WORKERS[index % len(LOCAL_WORKERS)])
    env.update({
        "EMP_REDIS_URL": url,
        "WORKER_ID": f"local-{index}",
        "WORKER_SERVICES": "simulation,echo",
        "MACHINE_ID": "local",
    })
    return env


def start_worker(index: int, url: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start ``emp worker`` for local worker ``index``, logging to ``log_dir``."""
    log = open(log_dir / f"worker-{index}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "emp_tasks.cli", "worker", "--loglevel", "warning"],
        env=worker_env(index, url), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_workers(url: str, worker_ids: list[str], timeout: float = 60.0) -> None:
    """Return once every worker has asked for work (it is idle and consuming)."""
    client = get_client(url)
    idle_key = Keys("default").idle
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = idle_workers(client.zrange(idle_key, 0, -1))
        if all(w in idle for w in worker_ids):
            return
        time.sleep(0.1)
    raise TimeoutError(f"workers {worker_ids} did not start within {timeout:.0f}s")


#: Receivers ``emp up``'s webhook service may call although not global: this box's own
#: (loopback). A developer's first hook points at a receiver on the same box; a webhook
#: service started alone (``emp webhooks``) still refuses them by default.
LOCAL_RECEIVERS = "127.0.0.0/8,::1/128"
#: The settings of which receivers are allowed; one the user set is left as it is.
RECEIVER_SETTINGS = ("EMP_WEBHOOK_ALLOW_PRIVATE", "EMP_WEBHOOK_ALLOWED_NETWORKS")


def service_env(command: str, url: str) -> dict[str, str]:
    """Environment of ``emp up``'s ``command`` service: the user's, on ``url``, and for the
    webhook service loopback receivers allowed unless the user set a receiver setting."""
    env = {**os.environ, "EMP_REDIS_URL": url}
    if command == "webhooks" and not any(defaults.env(name) for name in RECEIVER_SETTINGS):
        env["EMP_WEBHOOK_ALLOWED_NETWORKS"] = LOCAL_RECEIVERS
    return env


def start_service(command: str, port: int, url: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start ``emp api``, ``emp webhooks`` or ``emp monitor`` on ``port``; logs in ``log_dir``."""
    log = open(log_dir / f"{command}.log", "ab")
    env = service_env(command, url)
    return subprocess.Popen(
        [sys.executable, "-m", "emp_tasks.cli", command, "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_for_health(base: str, process: subprocess.Popen[bytes], timeout: float = 60.0,
                    path: str = "/health") -> None:
    """Return once ``base`` + ``path`` answers 200; raise if the process dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{base} exited with {process.returncode}; see its log")
        try:
            if requests.get(f"{base}{path}", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base}{path} did not answer 200 within {timeout:.0f}s")


#: Machine id of the local machine ``emp up --machine`` starts.
LOCAL_MACHINE_ID = "local-machine"


def start_machine(gpus: int, health_port: int, url: str,
                  data_dir: Path) -> subprocess.Popen[bytes]:
    """Start ``emp machine`` with ``gpus`` mock GPUs and one simulation worker on each."""
    log = open(data_dir / "machine.log", "ab")
    env = {**os.environ, "EMP_REDIS_URL": url, "EMP_MOCK_GPUS": str(gpus),
           "WORKERS": "simulation:auto", "MACHINE_ID": LOCAL_MACHINE_ID,
           "EMP_MACHINE_RUN_DIR": str((data_dir / "machine").resolve())}
    return subprocess.Popen(
        [sys.executable, "-m", "emp_tasks.cli", "machine", "--health-host", "127.0.0.1",
         "--health-port", str(health_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


@dataclass
class Stack:
    """Addresses of what ``local_stack`` started."""

    redis_url: str
    services: dict[str, str] = field(default_factory=dict)
    #: What the user should know, e.g. that the default Redis port was taken.
    notes: list[str] = field(default_factory=list)


def start_redis(data_dir: Path) -> tuple[LocalRedis, list[str]]:
    """A local Redis in ``data_dir`` on the default port, or a free one (with a note) if taken."""
    port, notes = defaults.LOCAL_REDIS_PORT, []
    if not port_is_free(port):
        port = free_port()
        notes.append(f"port {defaults.LOCAL_REDIS_PORT} is in use, so this stack's Redis "
                     f"listens on {port}")
    return LocalRedis(data_dir, port=port).start(), notes


#: The ``emp up`` option that sets each service's port.
PORT_OPTIONS = {"api": "--api-port", "webhooks": "--webhook-port",
                "monitor": "--monitor-port", "machine": "--health-port"}


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise EmpError naming the first taken port, before anything is started.

    A service that cannot bind exits, but whatever else holds the port (another
    stack's monitor) answers its health check: the stack would then run, and
    its demo talk, against someone else's server.
    """
    for command, port in ports.items():
        if not port_is_free(port):
            raise EmpError(f"port {port} for the {command} is in use (another `emp up` or "
                           f"server?); choose a free one with {PORT_OPTIONS[command]}")


@contextmanager
def local_stack(data_dir: Path, workers: int = 2, ports: dict[str, int] | None = None,
                machine_gpus: int = 0, redis_url: str | None = None) -> Iterator[Stack]:
    """Redis (a local one unless ``redis_url`` is given), ``workers`` local workers,
    the web services named in ``ports`` ({"api": 3331, "webhooks": 3332,
    "monitor": 3333, "machine": 9090}) and, with ``machine_gpus``, a local
    machine with that many mock GPUs."""
    check_ports_free(ports or {})
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, or no right to make it: was a traceback
        raise EmpError(f"cannot keep the data and logs in {data_dir}: "
                       f"{exc.strerror or exc}") from None
    pids = StackPids(data_dir)
    pids.refuse_if_left_running()
    server, notes, url = None, [], redis_url
    if not url:
        server, notes = start_redis(data_dir / "redis")
        pids.add("redis", server.process.pid, Path(server.binary).name)
        url = server.url
    processes: list[subprocess.Popen[bytes]] = []
    stack = Stack(url, notes=notes)

    def started(name: str, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        processes.append(process)
        pids.add(name, process.pid, "emp_tasks.cli")
        return process

    try:
        for i in range(workers):
            started(f"worker-{i}", start_worker(i, url, data_dir))
        if machine_gpus:
            port = (ports or {}).get("machine", 9090)
            machine = started("machine", start_machine(machine_gpus, port, url, data_dir))
            stack.services["machine"] = f"http://127.0.0.1:{port}"
        for command, port in (ports or {}).items():
            if command == "machine":
                continue
            process = started(command, start_service(command, port, url, data_dir))
            stack.services[command] = f"http://127.0.0.1:{port}"
            wait_for_health(stack.services[command], process)
        wait_for_workers(url, [f"local-{i}" for i in range(workers)])
        if machine_gpus:
            wait_for_health(stack.services["machine"], machine, path="/ready")
        yield stack
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if server is not None:
            server.stop()
        pids.clear()
