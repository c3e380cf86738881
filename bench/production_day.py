"""A production day in miniature: the whole web tier at 10x the original's stated load.

Why: each other bench measures one path on an otherwise idle system; this one
runs them all at once, for long enough to see memory creep, on this 2-core
machine. Everything is the real thing, started here: a private Redis
(``LocalRedis``, free port, no persistence), ``emp api`` (gunicorn, gevent),
``emp webhooks``, ``emp monitor`` and ``emp worker``s, each a subprocess in
its own process group, stopped on exit and on Ctrl-C.

The load, held for 10 minutes (2 with ``--quick``):

- REST submits at 100/s, open loop (submit i is due at start + i/100 whatever
  the earlier ones did; its latency counts from when it was due, so a stalled
  server cannot hide its backlog), 16 sender threads with keep-alive
  connections, spread over 50 customer tokens (2/s each);
- every submitted job is a ``simulation`` of 10 steps over 10 s: progress
  every second, and 100/s x 10 s = 1,000 jobs running at once. ``emp worker
  -P threads`` runs them in Celery's thread pool (a job that sleeps between
  steps costs a thread, not a process), so 2 workers x 550 threads hold 1,100
  slots; the jobs actually running are sampled every second;
- 5,000 client sockets (``/ws/client``, 100 per customer): 1,000 followers,
  each sent ``subscribe_progress`` for every tenth-second job of its customer
  right after its POST answered (so every REST job is followed), and 4,000
  idle ones that answer pings and send nothing;
- 20 monitor sockets (``/ws/monitor``, admin token, every topic, one
  ``request_full_state`` each), and one monitor page's event stream (SSE
  ``/emp/events`` of ``emp monitor``);
- 10 webhooks on a local threaded receiver, each for 5 customers'
  ``job_submitted``, ``complete_job`` and ``job_failed``.

The sockets are held by a minimal RFC 6455 client on selectors (no thread per
socket): the followers in this process, the idle and monitor sockets and the
SSE reader in a child process, so reading the monitors' firehose does not
delay the followers' clocks.

Reported: REST submit p50/p99 (from due time); progress to socket p50/p95/p99
(receipt minus the ``timestamp`` the progress call stamps from Redis TIME);
webhook event to receiver p50/p99 (receipt minus the event's stream id time);
RSS of each service (summed over its process group) at start, at minute 2
(minute 1 in ``--quick``) and at the end, and the growth between the last
two (and, every 30 s, each service's RSS, with the growth over the load's
second half: whether memory levels off once its caches are full); Redis
``used_memory`` at the same points; dropped connections (sockets the server
closed, REST connection errors); 5xx and other non-201 answers;
lost events (after the load stops and the followed jobs end: progress
events in each followed job's event stream that its follower never got);
jobs running at once; CPU cores each part used during the load (the bench's
own too: a starved load generator would show here). Targets: REST p99 <= 50
ms, progress p95 <= 100 ms, 0 5xx, 0 lost events, service memory growth < 10%
from minute 2 to the end. The load is open loop: when the API answers fewer
than 100 submits/s, the queued submits are still all sent and answered, so
the run lasts longer than its nominal time and "end" is when the last submit
was answered.

``--scale`` (fraction of rate, sockets and slots) and ``--monitor-sockets``
are for smoke tests and diagnosis only; the targets are for the defaults.
``--nice-background N`` starts the workers, the webhook service and the
monitor at nice N, as an operator sharing one host between the API and the
rest would (systemd ``Nice=``, ``CPUWeight=``): where the cores run short,
the API's requests get them first and the background services take what is
left.

File descriptors: this process raises its RLIMIT_NOFILE soft limit to the
hard one; the API holds ~5,100 sockets (plus its Redis pools) over its
processes, so ``ulimit -n`` for ``emp api`` must be well above that
(gunicorn's ``EMP_API_CONNECTIONS`` is 10,000 per process): 20,000 here.
"""

from __future__ import annotations

import base64
import http.client
import json
import multiprocessing
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    ROOT,
    emit_json,
    group_cpu_seconds,
    group_processes,
    paced,
    percentile,
    quick_args,
    start_redis,
    stop_worker,
    summary,
    verdict,
    worker_env,
)
from bench.webhook_delivery import Sink  # noqa: E402
from capability_router.keys import Keys  # noqa: E402
from emp_tasks.local_redis import free_port  # noqa: E402

RATE = 100.0
CUSTOMERS = 50
SOCKETS = 5000
FOLLOWERS = 1000
MONITOR_SOCKETS = 20
HOOKS = 10
WORKERS = 2
#: Thread-pool slots per worker: 1,000 jobs run at once at 100/s of 10 s jobs, plus
#: a margin for the time a job spends being claimed and finished.
THREADS_PER_WORKER = 550
STEPS, JOB_SECONDS = 10, 10.0
SENDER_THREADS = 16
WARMUP_SECONDS = 1.0
ADMIN = "tok-admin"
HOOK_EVENTS = ["job_submitted", "complete_job", "job_failed"]

REST_P99_MS = 50.0
PROGRESS_P95_MS = 100.0
GROWTH_LIMIT = 0.10


def token(customer: int) -> str:
    return f"tok-c{customer}"


# --- a minimal WebSocket client fleet ------------------------------------------------


def frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0xFE]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0xFF]) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


class Conn:
    """One client socket's state."""

    __slots__ = ("sock", "name", "buf", "open", "closed", "frags", "want_text")

    def __init__(self, sock: socket.socket, name: str, want_text: bool) -> None:
        self.sock, self.name, self.want_text = sock, name, want_text
        self.buf = bytearray()
        self.open = False
        self.closed = False
        self.frags: list[bytes] = []


class Fleet:
    """Many WebSocket clients on one thread: they answer pings, hand text messages to
    ``on_text`` (only those opened with ``want_text``; the others are counted)."""

    def __init__(self, port: int, on_text: Callable[[Conn, bytes], None] | None = None) -> None:
        self.port = port
        self.on_text = on_text
        self.selector = selectors.DefaultSelector()
        self.send_lock = threading.Lock()
        self.conns: list[Conn] = []
        self.accepted = 0
        self.refused: dict[str, int] = {}
        #: Sockets closed by the server (or reset) after their handshake was accepted.
        self.dropped: dict[str, int] = {}
        self.messages = 0
        self.bytes = 0
        self.stopping = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def connect(self, path: str, name: str, want_text: bool = False) -> Conn:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        conn = Conn(sock, name, want_text)
        self.conns.append(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def send_text(self, conn: Conn, text: str) -> None:
        if conn.closed:
            return
        data = frame(0x1, text.encode())
        with self.send_lock:
            try:
                conn.sock.sendall(data)
            except OSError:
                self._gone(conn, "send failed")

    def wait_open(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.accepted + sum(self.refused.values()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.accepted} of {count} sockets accepted in "
                                   f"{timeout:.0f} s; refused {self.refused}")
            time.sleep(0.1)

    def _gone(self, conn: Conn, why: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if conn.open and not self.stopping:
            self.dropped[why] = self.dropped.get(why, 0) + 1
        elif not conn.open:
            self.refused[why] = self.refused.get(why, 0) + 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self.selector.select(timeout=0.2)
            except (OSError, ValueError):  # a socket closed under select
                continue
            for key, _ in ready:
                conn: Conn = key.data
                try:
                    data = conn.sock.recv(262144)
                except OSError:
                    data = b""
                if not data:
                    self._gone(conn, "reset" if conn.open else "no handshake answer")
                    continue
                conn.buf += data
                if not conn.open and not self._handshake(conn):
                    continue
                self._frames(conn)

    def _handshake(self, conn: Conn) -> bool:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        status = conn.buf[:end].split(b"\r\n", 1)[0].split(b" ")[1].decode()
        del conn.buf[:end + 4]
        if status != "101":
            self._gone(conn, f"HTTP {status}")
            return False
        conn.open = True
        self.accepted += 1
        return True

    def _frames(self, conn: Conn) -> None:
        buf = conn.buf
        while len(buf) >= 2 and not conn.closed:
            opcode, fin, length, at = buf[0] & 0x0F, buf[0] & 0x80, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + length:
                return
            if opcode in (0x0, 0x1, 0x2):
                if conn.want_text:
                    conn.frags.append(bytes(buf[at:at + length]))
                del buf[:at + length]
                self.bytes += length
                if fin:
                    self.messages += 1
                    if conn.want_text and self.on_text is not None:
                        text = b"".join(conn.frags)
                        conn.frags.clear()
                        self.on_text(conn, text)
            else:
                payload = bytes(buf[at:at + length])
                del buf[:at + length]
                if opcode == 0x9:
                    with self.send_lock:
                        try:
                            conn.sock.sendall(frame(0xA, payload))
                        except OSError:
                            self._gone(conn, "reset")
                elif opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    with self.send_lock:
                        try:
                            conn.sock.sendall(frame(0x8, payload[:2]))
                        except OSError:
                            pass
                    self._gone(conn, f"close {code}")

    def close(self) -> None:
        self.stopping = True
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.conns:
            if not conn.closed:
                conn.closed = True
                conn.sock.close()


# --- the child process: idle client sockets, monitor sockets, one SSE page ----------


def sse_reader(base: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """One monitor page's live stream: counts its messages; reconnects when dropped."""
    while not stop.is_set():
        try:
            with requests.get(base + "/emp/events", stream=True, timeout=(5, 30)) as reply:
                if reply.status_code >= 500:
                    counts["5xx"] = counts.get("5xx", 0) + 1
                for line in reply.iter_lines():
                    if line.startswith(b"data:"):
                        counts["messages"] = counts.get("messages", 0) + 1
                    if stop.is_set():
                        return
        except requests.RequestException:
            pass
        if not stop.is_set():
            counts["dropped"] = counts.get("dropped", 0) + 1
            time.sleep(1)


def hold_sockets(api_port: int, monitor_base: str, idle: int, monitors: int,
                 control: Any, results: Any) -> None:
    """Child process: open the idle and monitor sockets, report "open", hold them until
    told to stop, then report what happened to them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    raise_fd_limit()
    fleet = Fleet(api_port)
    per_customer = idle // CUSTOMERS
    for n in range(idle):
        customer = n // per_customer
        fleet.connect(f"/ws/client/idle-{n}?token={token(customer)}", f"idle-{n}")
    monitor_conns = [fleet.connect(f"/ws/monitor/bench-{n}?token={ADMIN}", f"monitor-{n}")
                     for n in range(monitors)]
    try:
        fleet.wait_open(idle + monitors, timeout=300)
    except TimeoutError as exc:
        results.put({"error": str(exc)})
        fleet.close()
        return
    request = json.dumps({"type": "request_full_state",
                          "finishedJobsPagination": {"page": 1, "pageSize": 50}})
    for conn in monitor_conns:
        fleet.send_text(conn, request)
    stop = threading.Event()
    sse: dict[str, int] = {}
    threading.Thread(target=sse_reader, args=(monitor_base, stop, sse), daemon=True).start()
    results.put({"open": fleet.accepted, "refused": dict(fleet.refused)})
    control.get()  # "stop"
    monitor_messages = fleet.messages  # idle client sockets get no messages but pings
    dropped = dict(fleet.dropped)
    stop.set()
    fleet.close()
    results.put({"accepted": fleet.accepted, "refused": dict(fleet.refused),
                 "dropped": dropped, "monitor_messages": monitor_messages,
                 "monitor_bytes": fleet.bytes, "sse": sse,
                 "cpu_s": round(time.process_time(), 1)})


# --- services, memory ------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_service(command: list[str], env: dict[str, str], log: Path,
                  nice: int = 0) -> subprocess.Popen[bytes]:
    """``emp <command>`` in a session of its own; ``nice`` lowers its CPU priority
    (through nice(1), which execs the command: no ``preexec_fn`` in a process that
    already runs threads, the webhook receiver's)."""
    prefix = ["nice", "-n", str(nice)] if nice else []
    with open(log, "wb") as out:
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "emp_tasks.cli", *command],
                                env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if nice:
        lower_autogroup(proc.pid, nice)
    return proc


def lower_autogroup(pid: int, nice: int) -> None:
    """Give the session ``pid`` leads the CPU weight of ``nice``. Where Linux groups
    processes by session for scheduling (autogroup, ``kernel.sched_autogroup_enabled``,
    on here), a process's nice only ranks it within its session's group, and every
    service has a session of its own: the groups shared the cores evenly whatever the
    nice (stop 41's runs with the option: the same CPU per service as without)."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:  # no autogroup: nice(1) alone does it
        pass


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: service exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def group_rss_mb(pgid: int) -> float:
    """Resident memory (MB) summed over the live processes of a process group."""
    total_kb = 0
    for entry, _ in group_processes(pgid):
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError):  # gone since its stat was read
            continue
    return round(total_kb / 1024, 1)


# --- the load ---------------------------------------------------------------------------


class Followers:
    """The 1,000 following sockets and what they received."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.latency_ms: list[float] = []
        self.received: dict[str, set[str]] = {}
        self.completed: set[str] = set()
        self.errors: list[dict[str, Any]] = []
        self.fleet = Fleet(port, self.on_text)
        self.conns = [self.fleet.connect(f"/ws/client/follow-{n}?token={token(n % CUSTOMERS)}",
                                         f"follow-{n}", want_text=True)
                      for n in range(FOLLOWERS)]

    def on_text(self, conn: Conn, text: bytes) -> None:
        arrived = time.time() * 1000
        message = json.loads(text)
        kind = message.get("type")
        if kind == "update_job_progress":
            with self.lock:
                self.latency_ms.append(arrived - message["timestamp"])
                self.received.setdefault(message["job_id"], set()).add(message["event_id"])
        elif kind in ("complete_job", "job_failed", "job_cancelled"):
            with self.lock:
                self.completed.add(message["job_id"])
        elif kind == "error":
            with self.lock:
                self.errors.append(message)

    def follow(self, n: int, job_id: str) -> None:
        self.fleet.send_text(self.conns[n % FOLLOWERS],
                             json.dumps({"type": "subscribe_progress", "job_id": job_id}))


class Submitter:
    """REST submits at RATE, open loop; each accepted job is followed by a socket."""

    def __init__(self, base: str, followers: Followers) -> None:
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.followers = followers
        self.local = threading.local()
        self.lock = threading.Lock()
        self.latency_ms: list[float] = []
        #: The request alone (sent to answered), and the subscribe_progress send after it.
        self.service_ms: list[float] = []
        self.follow_ms: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.jobs: list[str] = []
        self.sent = 0

    def send(self, i: int, due: float) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(
                self.host, self.port, timeout=30)
        body = json.dumps({"service_required": "simulation",
                           "payload": {"steps": STEPS, "duration": JOB_SECONDS}})
        headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {token(i % CUSTOMERS)}"}
        started = time.perf_counter()
        try:
            connection.request("POST", "/api/jobs", body, headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.local.connection = None
            connection.close()
            with self.lock:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            return
        done = time.perf_counter()
        with self.lock:
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            if response.status == 201 and i >= WARMUP_SECONDS * RATE:
                self.latency_ms.append((done - due) * 1000.0)
                self.service_ms.append((done - started) * 1000.0)
        if response.status == 201:
            job_id = json.loads(answer)["job_id"]
            self.followers.follow(i, job_id)
            with self.lock:
                self.follow_ms.append((time.perf_counter() - done) * 1000.0)
            with self.lock:
                self.jobs.append(job_id)

    def run(self, seconds: float) -> None:
        """Send for ``seconds``."""
        total = int(seconds * RATE)
        pool = ThreadPoolExecutor(SENDER_THREADS)
        try:
            for i, due in paced(total, RATE):
                pool.submit(self.send, i, due)
                self.sent += 1
        except BaseException:  # Ctrl-C: drop the queued submits, do not wait for them
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def every_second(tick: Callable[[float], None], stop: threading.Event) -> threading.Thread:
    """Call ``tick(elapsed)`` about once a second on a thread of its own until ``stop``."""
    def run() -> None:
        started = time.monotonic()
        while not stop.wait(max(0.0, len(samples) + 1 - (time.monotonic() - started))):
            samples.append(None)
            tick(time.monotonic() - started)

    samples: list[None] = []
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def running_jobs(client: redis.Redis) -> int:
    keys = Keys()
    return int(client.zcard(keys.status_index("in_progress"))
               + client.zcard(keys.status_index("assigned")))


def count_emitted(client: redis.Redis, job_ids: list[str]) -> dict[str, int]:
    """Progress events in each job's own event stream."""
    keys, emitted = Keys(), {}
    for start in range(0, len(job_ids), 500):
        batch = job_ids[start:start + 500]
        with client.pipeline(transaction=False) as pipe:
            for job_id in batch:
                pipe.xrange(keys.job_events(job_id))
            replies = pipe.execute()
        for job_id, entries in zip(batch, replies, strict=True):
            emitted[job_id] = sum(1 for _, fields in entries
                                  if fields.get("event") == "update_job_progress")
    return emitted


def webhook_latencies(sink: Sink) -> tuple[list[float], int]:
    """Receipt minus the event's stream time (ms), and the distinct deliveries."""
    out, seen = [], set()
    with sink.lock:
        for path, arrivals in sink.arrivals.items():
            for at, body in arrivals:
                event_ms = int(body["event_id"].rpartition(":")[2].partition("-")[0])
                out.append(at - event_ms)
                seen.add((path, body["event_id"]))
    return out, len(seen)


def snapshot(services: dict[str, subprocess.Popen[bytes]],
             client: redis.Redis) -> dict[str, Any]:
    memory = client.info("memory")
    return {"rss_mb": {name: group_rss_mb(proc.pid) for name, proc in services.items()},
            "cpu_s": {"bench": round(time.process_time(), 1),
                      "redis": round(float(client.info("cpu")["used_cpu_user"])
                                     + float(client.info("cpu")["used_cpu_sys"]), 1),
                      **{name: round(group_cpu_seconds(proc.pid), 1)
                         for name, proc in services.items()}},
            "redis_used_mb": round(memory["used_memory"] / 2**20, 1),
            "redis_rss_mb": round(memory["used_memory_rss"] / 2**20, 1),
            "loadavg_1m": os.getloadavg()[0], "wall": time.monotonic()}


def main() -> None:
    global RATE, SOCKETS, FOLLOWERS, THREADS_PER_WORKER, MONITOR_SOCKETS  # noqa: PLW0603
    args = quick_args(__doc__, lambda parser: (
        parser.add_argument("--seconds", type=float, help="load duration (smoke tests)"),
        parser.add_argument("--scale", type=float, default=1.0,
                            help="fraction of the rate, sockets and slots (smoke tests only; "
                                 "the targets are for 1)"),
        parser.add_argument("--monitor-sockets", type=int, default=MONITOR_SOCKETS,
                            help="monitor sockets (diagnosis only; the targets are for 20)"),
        parser.add_argument("--nice-background", type=int, default=0, metavar="N",
                            help="run the workers, webhooks and monitor at nice N (the API, "
                                 "Redis and the load at 0): the API first for the CPU")))
    MONITOR_SOCKETS = args.monitor_sockets
    seconds = args.seconds or (120.0 if args.quick else 600.0)
    mark = min(60.0 if args.quick else 120.0, seconds / 2)
    if args.scale != 1.0:
        RATE *= args.scale
        FOLLOWERS = max(CUSTOMERS, round(FOLLOWERS * args.scale / CUSTOMERS) * CUSTOMERS)
        SOCKETS = max(2 * FOLLOWERS, round(SOCKETS * args.scale / CUSTOMERS) * CUSTOMERS)
        THREADS_PER_WORKER = max(10, round(THREADS_PER_WORKER * args.scale))
    fd_limit = raise_fd_limit()
    print(f"open files: this process {fd_limit}; services inherit `ulimit -n` "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}", flush=True)
    interrupted = False

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    url, stop_redis = start_redis()
    client = redis.Redis.from_url(url, decode_responses=True)
    logs = Path(tempfile.mkdtemp(prefix="emp-bench-prodday-"))
    tokens = ",".join(f"{token(c)}=c{c}" for c in range(CUSTOMERS))
    env = worker_env(url, EMP_API_TOKENS=tokens, EMP_ADMIN_TOKENS=ADMIN,
                     EMP_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
                     WORKER_CONCURRENCY=str(THREADS_PER_WORKER), WORKER_SERVICES="simulation")
    services: dict[str, subprocess.Popen[bytes]] = {}
    ctx = multiprocessing.get_context("spawn")
    control, results = ctx.Queue(), ctx.Queue()
    holder = None
    sink = Sink()
    followers: Followers | None = None
    stop_sampling = threading.Event()
    result: dict[str, Any] = {"bench": "production_day", "quick": args.quick,
                              "seconds": seconds, "rate": RATE, "scale": args.scale,
                              "monitor_sockets": MONITOR_SOCKETS,
                              "nice_background": args.nice_background,
                              "pid": os.getpid()}
    try:
        api_port, hooks_port, monitor_port = free_port(), free_port(), free_port()
        api_base = f"http://127.0.0.1:{api_port}"
        hooks_base = f"http://127.0.0.1:{hooks_port}"
        monitor_base = f"http://127.0.0.1:{monitor_port}"
        services["api"] = start_service(["api", "--port", str(api_port)], env, logs / "api.log")
        nice = args.nice_background
        services["webhooks"] = start_service(["webhooks", "--port", str(hooks_port)], env,
                                             logs / "webhooks.log", nice)
        services["monitor"] = start_service(["monitor", "--port", str(monitor_port)], env,
                                            logs / "monitor.log", nice)
        for n in range(WORKERS):
            services[f"worker{n + 1}"] = start_service(
                ["worker", "-P", "threads", "-l", "warning"],
                {**env, "WORKER_ID": f"prodday-{n + 1}"}, logs / f"worker{n + 1}.log", nice)
        for name, base in (("api", api_base), ("webhooks", hooks_base),
                           ("monitor", monitor_base)):
            wait_http(base + "/health", services[name], logs / f"{name}.log")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for n in range(HOOKS):
            customers = [f"c{c}" for c in range(n * CUSTOMERS // HOOKS,
                                                (n + 1) * CUSTOMERS // HOOKS)]
            reply = requests.post(hooks_base + "/webhooks", headers=admin, timeout=10, json={
                "url": f"http://127.0.0.1:{sink.port}/hook{n}", "events": HOOK_EVENTS,
                "filters": {"customer_ids": customers}})
            reply.raise_for_status()
        print(f"services up (logs in {logs}); opening {SOCKETS} client sockets "
              f"and {MONITOR_SOCKETS} monitor sockets", flush=True)
        opened = time.monotonic()
        holder = ctx.Process(target=hold_sockets, daemon=True, args=(
            api_port, monitor_base, SOCKETS - FOLLOWERS, MONITOR_SOCKETS, control, results))
        holder.start()
        followers = Followers(api_port)
        followers.fleet.wait_open(FOLLOWERS, timeout=300)
        held = results.get(timeout=400)
        if "error" in held:
            raise RuntimeError(held["error"])
        open_s = time.monotonic() - opened
        print(f"sockets open in {open_s:.1f} s: followers {followers.fleet.accepted}"
              f"/{FOLLOWERS}, idle + monitor {held['open']}/{SOCKETS - FOLLOWERS + MONITOR_SOCKETS}"
              f"; refused {followers.fleet.refused or ''}{held['refused'] or ''}", flush=True)
        result["sockets_open_s"] = round(open_s, 1)
        time.sleep(2.0)

        points: dict[str, dict[str, Any]] = {"start": snapshot(services, client)}
        concurrency: list[tuple[float, int]] = []
        #: (seconds into the load, service -> RSS MB) every 30 s: whether memory levels off
        rss_series: list[tuple[int, dict[str, float]]] = []
        submitter = Submitter(api_base, followers)

        def tick(elapsed: float) -> None:
            concurrency.append((elapsed, running_jobs(client)))
            if "mark" not in points and elapsed >= mark:
                points["mark"] = snapshot(services, client)
            if round(elapsed) % 30 == 0:
                with followers.lock:
                    n = len(followers.latency_ms)
                    p95 = percentile(followers.latency_ms[-5000:], 95)
                rss = {name: group_rss_mb(proc.pid) for name, proc in services.items()}
                rss_series.append((round(elapsed), rss))
                print(f"  {elapsed:5.0f} s: {submitter.sent} sent, running {concurrency[-1][1]}, "
                      f"progress events {n} (recent p95 {p95:.1f} ms), "
                      f"load {os.getloadavg()[0]:.2f}; RSS MB "
                      + " ".join(f"{name} {mb:.0f}" for name, mb in rss.items()), flush=True)

        print(f"load: {RATE:.0f} submits/s for {seconds:.0f} s", flush=True)
        sampler = every_second(tick, stop_sampling)
        submitter.run(seconds)
        stop_sampling.set()
        sampler.join(5)
        points["end"] = snapshot(services, client)
        for name, proc in services.items():
            if proc.poll() is not None:
                result.setdefault("service_exited", []).append(name)

        # Drain: the followed jobs finish, then what their streams hold is compared.
        jobs = list(submitter.jobs)
        deadline = time.monotonic() + JOB_SECONDS + 60
        while time.monotonic() < deadline:
            with followers.lock:
                if len(followers.completed & set(jobs)) >= len(jobs):
                    break
            time.sleep(1.0)
        time.sleep(2.0)
        control.put("stop")
        held = results.get(timeout=60)
        emitted = count_emitted(client, jobs)
        with followers.lock:
            lost = sum(max(0, n - len(followers.received.get(job_id, ())))
                       for job_id, n in emitted.items())
            unfinished = len(set(jobs) - followers.completed)
            progress = list(followers.latency_ms)
            socket_errors = list(followers.errors)
        hook_ms, delivered = webhook_latencies(sink)
        expected_hooks = 2 * len(jobs)  # job_submitted and complete_job (or job_failed)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping everything", flush=True)
    finally:
        stop_sampling.set()
        if holder is not None and holder.is_alive():
            holder.terminate()
            holder.join(5)
        if followers is not None:
            followers.fleet.close()
        for proc in services.values():
            stop_worker(proc, grace=5)
        sink.server.shutdown()
        stop_redis()
    if interrupted:
        sys.exit(130)

    # --- report ---
    rest = summary(submitter.latency_ms)
    fivexx = sum(n for status, n in submitter.statuses.items() if status >= 500)
    other = {s: n for s, n in submitter.statuses.items() if s != 201 and s < 500}
    steady = [n for t, n in concurrency if t >= JOB_SECONDS + 5]
    prog = summary(progress)
    prog_p95 = round(percentile(progress, 95), 3)
    hooks = summary(hook_ms)
    dropped = {f"followers {k}": v for k, v in followers.fleet.dropped.items()}
    dropped.update({f"idle/monitor {k}": v for k, v in held["dropped"].items()})
    if held["sse"].get("dropped"):
        dropped["monitor SSE"] = held["sse"]["dropped"]
    dropped_total = sum(dropped.values()) + sum(submitter.errors.values())
    growth = {name: round((points["end"]["rss_mb"][name] - points["mark"]["rss_mb"][name])
                          / points["mark"]["rss_mb"][name], 3)
              for name in services if points["mark"]["rss_mb"][name]}
    mark_name = f"minute {mark / 60:.0f}" if mark % 60 == 0 else f"{mark:.0f} s"
    print(f"REST submits: {submitter.sent} sent, {submitter.statuses.get(201, 0)} accepted; "
          f"latency from due time p50 {rest['p50']:.2f} ms, p99 {rest['p99']:.2f} ms, "
          f"max {rest['max']:.1f} ms; 5xx {fivexx}; other refusals {other or 0}; "
          f"connection errors {submitter.errors or 0}")
    service, follow = summary(submitter.service_ms), summary(submitter.follow_ms)
    print(f"  the request alone p50 {service['p50']:.2f} ms, p99 {service['p99']:.2f} ms; "
          f"sending its subscribe_progress p50 {follow['p50']:.2f} ms, "
          f"p99 {follow['p99']:.2f} ms ({SENDER_THREADS} sender threads)")
    print(f"jobs running at once (sampled each second after {JOB_SECONDS + 5:.0f} s): "
          f"median {percentile(steady, 50):.0f}, max {max(steady, default=0)} "
          f"({WORKERS} workers x {THREADS_PER_WORKER} threads)")
    print(f"progress -> follower socket: {prog['n']} events, p50 {prog['p50']:.1f} ms, "
          f"p95 {prog_p95:.1f} ms, p99 {prog['p99']:.1f} ms, max {prog['max']:.1f} ms")
    print(f"lost progress events: {lost} of {sum(emitted.values())} emitted by "
          f"{len(jobs)} followed jobs ({unfinished} not finished by the end of the drain); "
          f"socket errors {len(socket_errors)}")
    print(f"webhooks: {delivered} deliveries of {expected_hooks} expected; event -> receiver "
          f"p50 {hooks['p50']:.1f} ms, p99 {hooks['p99']:.1f} ms, max {hooks['max']:.1f} ms")
    print(f"idle client + monitor sockets: {held['monitor_messages']} messages "
          f"({held['monitor_bytes'] / 2**20:.0f} MB; the idle ones get connection_established "
          f"only, the {MONITOR_SOCKETS} monitor sockets every event); "
          f"monitor SSE: {held['sse'].get('messages', 0)} messages")
    print(f"dropped connections: {dropped_total} {dropped or ''}"
          f"{' REST ' + str(submitter.errors) if submitter.errors else ''}")
    print(f"{'RSS MB':<10} {'start':>8} {mark_name:>9} {'end':>8} {'growth':>7}")
    for name in services:
        print(f"{name:<10} {points['start']['rss_mb'][name]:>8.1f} "
              f"{points['mark']['rss_mb'][name]:>9.1f} {points['end']['rss_mb'][name]:>8.1f} "
              f"{growth.get(name, 0) * 100:>6.1f}%")
    for label, field in (("redis used", "redis_used_mb"), ("redis rss", "redis_rss_mb")):
        print(f"{label:<10} {points['start'][field]:>8.1f} {points['mark'][field]:>9.1f} "
              f"{points['end'][field]:>8.1f}")
    # Not the target's window: whether memory levels off once caches are full (the
    # monitor's task history fills to its cap long after minute 2 at this machine's rate).
    load_s = points["end"]["wall"] - points["start"]["wall"]
    half = next(((t, rss) for t, rss in rss_series if t >= load_s / 2), None)
    late_growth = {name: round((points["end"]["rss_mb"][name] - half[1][name]) / half[1][name], 3)
                   for name in services if half and half[1].get(name)}
    if half:
        print(f"RSS growth from {half[0]} s (half the load) to the end: "
              + ", ".join(f"{name} {g * 100:+.1f}%" for name, g in late_growth.items()))
    cpu = {name: round((points["end"]["cpu_s"][name] - points["start"]["cpu_s"][name])
                       / load_s, 2) for name in points["end"]["cpu_s"]}
    cpu["bench sockets child"] = round(held["cpu_s"] / load_s, 2)  # includes opening them
    print("CPU cores used during the load: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print(f"load average (1 min): start {points['start']['loadavg_1m']:.2f}, "
          f"{mark_name} {points['mark']['loadavg_1m']:.2f}, "
          f"end {points['end']['loadavg_1m']:.2f} (2 cores)")
    targets = {
        "rest_p99_le_50ms": rest["p99"] <= REST_P99_MS,
        "progress_p95_le_100ms": prog_p95 <= PROGRESS_P95_MS,
        "no_5xx": fivexx == 0,
        "no_lost_events": lost == 0,
        "memory_growth_lt_10pct": all(g < GROWTH_LIMIT for g in growth.values()),
    }
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'not met'} ({verdict(ok)})")
    result.update({
        "rest_ms": rest, "rest_service_ms": service, "rest_follow_ms": follow,
        "rest_statuses": submitter.statuses, "rest_errors": submitter.errors,
        "fivexx": fivexx, "progress_ms": prog, "progress_p95_ms": prog_p95,
        "lost_events": lost, "emitted_events": sum(emitted.values()),
        "followed_jobs": len(jobs), "unfinished_jobs": unfinished,
        "socket_errors": len(socket_errors), "webhook_ms": hooks,
        "webhook_deliveries": delivered, "webhook_expected": expected_hooks,
        "running_median": percentile(steady, 50), "running_max": max(steady, default=0),
        "slots": WORKERS * THREADS_PER_WORKER, "dropped": dropped_total,
        "dropped_detail": dropped, "monitor_messages": held["monitor_messages"],
        "sse_messages": held["sse"].get("messages", 0), "memory": points,
        "growth": growth, "mark_s": mark, "rss_series": rss_series,
        "growth_second_half": late_growth, "cpu_cores": cpu, "targets": targets,
        "all_targets_met": all(targets.values()),
    })
    emit_json(result)


if __name__ == "__main__":
    main()
