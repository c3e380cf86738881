"""Shared benchmark helpers: a throwaway Redis server, percentiles, the JSON result line.

Every benchmark starts its own server (never the one on port 6379) on a free
port, without persistence, in a temporary directory, and stops it at the end.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from emp_tasks.local_redis import LocalRedis

#: Repository root (the directory holding ``bench/``); workers need it on PYTHONPATH.
ROOT = Path(__file__).resolve().parent.parent


def start_redis() -> tuple[str, Callable[[], None]]:
    """Start a private server without persistence; returns (url, stop).

    The server is the project's own ``LocalRedis`` (same binary choice and
    settings as ``emp up`` and the tests); ``stop`` is safe to call twice.
    """
    workdir = tempfile.mkdtemp(prefix="emp-bench-redis-")
    server = LocalRedis(workdir, appendonly=False).start()

    def stop() -> None:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    return server.url, stop


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU time (user + sys) the server has used so far."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def group_processes(pgid: int) -> Iterator[tuple[Path, list[str]]]:
    """The live processes of a process group: each one's ``/proc/<pid>`` folder and its
    ``stat`` fields from field 3 (state) on (a process gone meanwhile is skipped)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5: pgrp
            yield entry, fields


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + sys) used so far by the live processes of a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
                for _, fields in group_processes(pgid))
    return total / tick


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0-100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p99, mean, max of a sample (rounded to 3 decimals)."""
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(sum(values) / len(values), 3) if values else math.nan,
        "max": round(max(values), 3) if values else math.nan,
    }


def paced(total: int, rate: float) -> Iterator[tuple[int, float]]:
    """Open-loop schedule: yield (i, due) once request i is due, ``rate`` per second.

    Latency counts from ``due``, whatever earlier requests did, so a stalled
    server cannot hide its backlog (no coordinated omission)."""
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i, due


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def emit_json(result: dict[str, Any]) -> None:
    """Print the result as the last line of output: one line of strict JSON (NaN -> null)."""
    sys.stdout.flush()
    print(json.dumps(_finite(result), sort_keys=True, default=str, allow_nan=False), flush=True)


def quick_args(
    doc: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse ``--quick``, and the options ``extra`` adds to the parser."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (under 60 s)")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def worker_env(url: str, **extra: str) -> dict[str, str]:
    """Environment of a Celery worker subprocess: repo on PYTHONPATH, private Redis."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["EMP_REDIS_URL"] = url
    env["BENCH_REDIS_URL"] = url
    env.update(extra)
    return env


def start_worker(
    app: str, queue: str, env: dict[str, str], concurrency: int, log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``celery -A bench._noop_tasks:<app> worker`` in its own process group."""
    celery = str(Path(sys.executable).with_name("celery"))
    cmd = [
        celery, "-A", f"bench._noop_tasks:{app}", "worker", "-Q", queue,
        "-c", str(concurrency), "-P", "prefork", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "-l", "warning", "-n", f"{app}-{os.getpid()}@%h",
    ]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            cmd, env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()  # the worker has its own copy of the descriptor
    _workers.append(proc)
    return proc


_workers: list[subprocess.Popen[bytes]] = []


@contextmanager
def running_worker(
    app: str, queue: str, env: dict[str, str], concurrency: int, log_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker for the body of a ``with``; its log tail is printed if the body fails."""
    proc = start_worker(app, queue, env, concurrency, log_path)
    try:
        yield proc
    except Exception:
        print(f"--- worker log ({log_path}) ---\n{log_path.read_text()[-3000:]}", flush=True)
        raise
    finally:
        stop_worker(proc)


@atexit.register
def _stop_leftover_workers() -> None:
    for proc in _workers:
        stop_worker(proc, grace=2.0)


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Warm-shutdown the worker (SIGTERM to its main process), then kill its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
