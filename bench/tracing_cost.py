"""What job tracing costs a submit: ``producer.submit`` p50/p99 before tracing, off, and on.

Three sides, each in its own process on one private Redis (no worker runs;
jobs stay pending):

- ``before``: the code of a git ref without tracing (``--before-ref``,
  default ``main``), exported with ``git archive`` to a temporary directory;
- ``off``: this tree, no OTLP endpoint (the default);
- ``on``: this tree, ``OTEL_EXPORTER_OTLP_ENDPOINT`` naming an OTLP sink in
  the same process (a thread answering 200), default batch settings; the
  span export runs in the SDK's background thread, so its CPU is counted.

The sides alternate in rounds (each round: a fresh process per side, 100
warm-up submits left out, then ``--submits``) so drift on a shared machine
hits all alike. Quick: 3 rounds of 300; full: 6 rounds of 1000. Printed:
p50/p99 per side and the ratios to ``before``; final line: JSON. The first
submit of each process (imports, connections, the SDK's set-up when on) is
reported apart as ``first_ms``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, emit_json, quick_args, start_redis, summary  # noqa: E402

WARMUP = 100

#: The timing loop, run by each side's process (PYTHONPATH: the side's tree).
CHILD = r"""
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

url, side, count, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if side == "on":
    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
from emp_tasks.app import create_app
from emp_tasks.producer import submit
import emp_tasks

app = create_app(url)
started = time.perf_counter()
submit("echo", {"n": -1}, app=app)
first = (time.perf_counter() - started) * 1000
samples = []
for n in range(warmup + count):
    started = time.perf_counter()
    submit("echo", {"n": n}, app=app)
    if n >= warmup:
        samples.append((time.perf_counter() - started) * 1000)
traced = [m for m in sys.modules
          if m.startswith(("emp_tasks.tracing_sdk", "opentelemetry.sdk.trace"))]
print(json.dumps({"first_ms": first, "samples": samples, "code": emp_tasks.__file__,
                  "tracing_loaded": bool(traced)}))
"""


def export_tree(ref: str, into: Path) -> Path:
    """The files of ``ref`` (a git ref of this repository) under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    # Compiled once here, as this tree is, so no side's first submit pays for compiling.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], check=True)
    return into


def run_side(tree: Path, url: str, side: str, count: int) -> dict:
    """One process of one side: its first submit and its timed submits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(tree), EMP_REDIS_URL=url, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", CHILD, url, side, str(count), str(WARMUP)],
                          cwd=str(tree), env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{side}: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["code"].startswith(str(tree)):
        raise RuntimeError(f"{side} ran {result['code']}, not the code in {tree}")
    if result["tracing_loaded"] != (side == "on"):
        raise RuntimeError(f"{side}: tracing modules loaded = {result['tracing_loaded']}")
    return result


def main() -> None:
    args = quick_args(__doc__, lambda p: (
        p.add_argument("--before-ref", default="main", help="git ref without tracing"),
        p.add_argument("--submits", type=int, help="timed submits per side and round")))
    rounds = 3 if args.quick else 6
    count = args.submits or (300 if args.quick else 1000)
    url, stop = start_redis()
    samples: dict[str, list[float]] = {"before": [], "off": [], "on": []}
    firsts: dict[str, list[float]] = {"before": [], "off": [], "on": []}
    try:
        with tempfile.TemporaryDirectory(prefix="emp-bench-before-") as before_dir:
            trees = {"before": export_tree(args.before_ref, Path(before_dir)),
                     "off": ROOT, "on": ROOT}
            order = ["before", "off", "on"]
            for i in range(rounds):
                for side in order[i % 3:] + order[:i % 3]:
                    result = run_side(trees[side], url, side, count)
                    samples[side] += result["samples"]
                    firsts[side].append(result["first_ms"])
    finally:
        stop()
    stats = {side: summary(values) for side, values in samples.items()}
    first = {side: summary(values) for side, values in firsts.items()}
    base = stats["before"]
    for side in ("before", "off", "on"):
        s = stats[side]
        print(f"submit {side:>6}: p50 {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms "
              f"(p50 x{s['p50'] / base['p50']:.3f} of before); first submit p50 "
              f"{first[side]['p50']:.1f} ms")
    emit_json({
        "benchmark": "tracing_cost", "quick": args.quick, "rounds": rounds, "submits": count,
        "before_ref": args.before_ref, "submit_ms": stats, "first_submit_ms": first,
        "p50_ratio_off": round(stats["off"]["p50"] / base["p50"], 3),
        "p50_ratio_on": round(stats["on"]["p50"] / base["p50"], 3),
    })


if __name__ == "__main__":
    main()
